"""``Client.map`` on a real 3-node devstack: functions shipped as source run on the nodes' real
Pyodide engine, values come back in order, remote exceptions come back with their traceback.

No Kubo: each node keeps its results. Every node computes, so a map's indexes spread over three.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pytest
import trio

from devstack import Devstack
from tests.integration.single_node import in_process_devstack

pytestmark = pytest.mark.slow

RATE = 0.05  # a module global the shipped functions read
TABLE = {"discount": (0.9, 0.8)}  # plain data, shipped encoded


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devstack]:
    with in_process_devstack(tmp_path_factory.mktemp("map"), 3) as devstack:
        yield devstack


@pytest.fixture
def client(stack: Devstack) -> Iterator:
    from shoal import Client

    with Client(stack.nodes[0].api) as c:
        yield c


def grow(x: float) -> float:
    return _compound(x, 2)


def _compound(x: float, years: int) -> float:  # a helper shipped along with grow
    return round(x * (1 + RATE) ** years * TABLE["discount"][0], 9)


def test_map_over_20_items_returns_every_value_in_order(client) -> None:
    items = list(range(20))
    assert client.map(grow, items) == [grow(x) for x in items]


def test_with_confidence_every_value_is_one_that_two_nodes_returned(client) -> None:
    items = list(range(6))
    assert client.map(grow, items, confidence=2) == [grow(x) for x in items]
    [sweep] = client.list_sweeps(limit=1).sweeps
    assert sweep.spec.confidence == 2
    records = client.sweep_indexes(sweep.id).indexes
    assert [r.reason.startswith("completed, verified by 2 of") for r in records] == [True] * 6


def test_map_runs_closures_and_lambdas_with_what_they_close_over(client) -> None:
    def scaled(k: int):
        offset = {"a": 1.5}

        def f(x: int) -> tuple:
            return (x * k + offset["a"], math.floor(x / 3))

        return f

    assert client.map(scaled(10), [1, 2, 3]) == [(11.5, 0), (21.5, 0), (31.5, 1)]
    assert client.map(lambda a, b: a ** b, [2, 3], [3, 2]) == [8, 9]


def test_a_grid_calls_the_function_with_every_point_in_grid_order(client) -> None:
    def price(s0: float, vol: float) -> dict:
        return {"price": s0 * vol, "s0_seen": s0}

    values = client.map(price, grid={"s0": [100, 110], "vol": [0.1, 0.2, 0.3]})
    assert values == [{"price": s0 * vol, "s0_seen": s0} for s0 in (100, 110) for vol in (0.1, 0.2, 0.3)]


def test_a_remote_exception_is_raised_here_with_the_remote_traceback(client) -> None:
    from shoal import RemoteError

    def check(x: int) -> int:
        if x == 4:
            raise ValueError(f"no {x} please")
        return x

    with pytest.raises(RemoteError) as caught:
        client.map(check, range(8))
    error = caught.value
    assert isinstance(error, ValueError)  # a built-in type: `except ValueError` catches it too
    assert error.index == 4 and error.type_name == "ValueError" and error.remote_message == "no 4 please"
    assert "raise ValueError(f\"no {x} please\")" in error.remote_traceback  # the remote traceback shows our line
    assert f'File "{__file__}"' in error.remote_traceback
    assert str(error.__cause__).count("no 4 please") == 1  # printed with the error, as its cause
    # the rest of the sweep was cancelled or had finished
    assert client.describe_sweep(error.sweep_id).sweep.state.value in ("failed", "cancelled")
    values = client.map(check, range(6), return_exceptions=True)
    assert values[:4] == [0, 1, 2, 3] and values[5] == 5
    assert isinstance(values[4], RemoteError) and values[4].index == 4


def test_the_iterator_yields_each_index_as_it_finishes(client) -> None:
    seen = dict(client.map_iter(grow, range(10)))
    assert seen == {i: grow(i) for i in range(10)}
    ordered = [i for i, _ in client.map_iter(grow, range(10), ordered=True)]
    assert ordered == list(range(10))


def test_leaving_the_iterator_early_cancels_the_rest(client) -> None:
    from jobs.states import JobState

    results = client.map_iter(grow, range(30))
    with contextlib.closing(results):
        index, value = next(results)
    assert value == grow(index)
    sweeps = client.list_sweeps(limit=1).sweeps
    assert sweeps[0].state in (JobState.CANCELLED, JobState.COMPLETED)


def slowly(x: int) -> int:
    return sum(range(300_000)) * 0 + x * x  # a fraction of a second in Pyodide


def first_fast(x: int) -> int:
    """Item 0 at once, the others after 5 s (a container's sleep is real): the map is left after its
    first value while the rest still run, however busy the machine (on a loaded one, all 12 of ``slowly``
    once completed before the first value was read, and so did these when they slept 1 s, with the tests
    run in parallel: nothing was left to cancel)."""
    import time

    if x:
        time.sleep(5.0)
    return x * x


def test_the_same_map_run_again_takes_up_its_sweep_and_runs_only_what_had_not_completed(client) -> None:
    """A kernel that died mid-map (or a Ctrl-C, which cancels the rest) left its values on the nodes:
    running the same cell again started a new sweep that ran every item again."""
    from jobs.states import JobState

    results = client.map_iter(slowly, range(96))
    with contextlib.closing(results):
        next(results)  # leaving early cancels the rest
    [first] = client.list_sweeps(limit=1).sweeps
    before = {r.index: r.updated_at for r in client.sweep_indexes(first.id, limit=200).indexes
              if r.state is JobState.COMPLETED}
    assert first.state is JobState.CANCELLED and 0 < len(before) < 96, first.counts
    assert client.map(slowly, range(96)) == [x * x for x in range(96)]
    [again] = client.list_sweeps(limit=1).sweeps
    assert again.id == first.id and again.state is JobState.COMPLETED  # the same sweep, resumed
    after = {r.index: r.updated_at for r in client.sweep_indexes(first.id, limit=200).indexes}
    assert all(after[i] == at for i, at in before.items())  # what had completed did not run again


def test_async_client_map(stack: Devstack) -> None:
    from shoal import AsyncClient

    async def main() -> tuple[list, dict]:
        async with AsyncClient(stack.nodes[0].api) as client:
            values = await client.map(grow, range(12))
            async with contextlib.aclosing(client.map_iter(grow, range(5))) as results:
                seen = {i: v async for i, v in results}
        return values, seen

    values, seen = trio.run(main)
    assert values == [grow(x) for x in range(12)]
    assert seen == {i: grow(i) for i in range(5)}


def test_as_frame_gives_the_grid_as_columns_and_the_values(client) -> None:
    pd = pytest.importorskip("pandas")

    def area(w: int, h: int) -> int:
        return w * h

    frame = client.map(area, grid={"w": [1, 2], "h": [3, 4]}, as_frame=True)
    assert isinstance(frame, pd.DataFrame)
    assert frame.to_dict("records") == [{"w": 1, "h": 3, "value": 3}, {"w": 1, "h": 4, "value": 4},
                                        {"w": 2, "h": 3, "value": 6}, {"w": 2, "h": 4, "value": 8}]


@pytest.mark.parametrize("argv", [["--pure"], []], ids=["pure-python-on-pyodide", "numpy-in-python-sci"])
def test_the_montecarlo_map_example_prices_its_grid_close_to_black_scholes(stack, monkeypatch, capsys, argv) -> None:
    """examples/montecarlo-map, run as its README says."""
    import importlib.util

    if not argv and (missing := _python_sci_missing()):
        pytest.skip(missing)
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "montecarlo-map" / "pricer.py"
    spec = importlib.util.spec_from_file_location("montecarlo_map_pricer", path)
    assert spec is not None and spec.loader is not None
    pricer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pricer)
    monkeypatch.setenv("SHOAL_API", stack.nodes[0].api)
    pricer.main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["s0", "vol", "price", "stderr", "black_scholes"]  # also pandas' header
    rows = [[float(x) for x in line.split()] for line in lines[1:]]
    points = [(s0, vol) for s0 in pricer.GRID["s0"] for vol in pricer.GRID["vol"]]
    assert [(s0, vol) for s0, vol, *_ in rows] == points  # grid order
    for s0, vol, price, stderr, exact in rows:
        assert exact == pytest.approx(pricer.black_scholes(s0, vol), abs=1e-3)
        assert abs(price - exact) < 4 * stderr + 1e-3, (s0, vol, price, exact, stderr)


def _python_sci_missing() -> str | None:
    """Why ``image=`` cannot be tested here, or None."""
    from jobs.spec import PythonEngine

    if "image" not in PythonEngine.model_fields:
        return "this python engine takes no image (shoal run python --image)"
    try:
        import docker

        docker.from_env(timeout=30).images.get("shoal/python-sci")
    except Exception as e:  # no daemon, no image
        return f"no shoal/python-sci image on a Docker daemon ({type(e).__name__}): shoal images build"
    return None


def test_image_runs_the_function_in_a_container_with_numpy(stack, client, monkeypatch, capsys) -> None:
    missing = _python_sci_missing()
    if missing:
        pytest.skip(missing)

    def mean_of_draws(seed: int) -> float:
        import numpy as np

        return np.random.default_rng(seed).standard_normal(1000).mean()  # a numpy float: comes back a float

    values = client.map(mean_of_draws, [1, 2, 3], image="shoal/python-sci", job={"resources": {"memory": "256MiB"}})
    assert all(isinstance(v, float) and abs(v) < 0.2 for v in values)
    assert values == client.map(mean_of_draws, [1, 2, 3], image="shoal/python-sci",
                                job={"resources": {"memory": "256MiB"}})  # seeded: the same on any node
    with pytest.raises(ZeroDivisionError):
        client.map(lambda x: 1 / x, [0], image="shoal/python-sci")


def test_an_image_map_run_again_takes_up_its_unfinished_sweep_and_runs_afresh_once_it_completed(
        stack, client) -> None:  # fmt: skip
    """A Ctrl-C'd numpy map (an image's: its entropy is real) started a new sweep when run again, and threw
    away the 45 of 300 values it had."""
    from jobs.states import JobState

    missing = _python_sci_missing()
    if missing:
        pytest.skip(missing)
    options = {"image": "shoal/python-sci", "job": {"resources": {"memory": "256MiB"}}}
    results = client.map_iter(first_fast, range(12), **options)
    with contextlib.closing(results):
        next(results)  # leaving early cancels the rest
    [first] = client.list_sweeps(limit=1).sweeps
    assert first.state is JobState.CANCELLED, first.counts
    done = {r.index: r.updated_at for r in client.sweep_indexes(first.id).indexes if r.state is JobState.COMPLETED}
    assert client.map(first_fast, range(12), **options) == [x * x for x in range(12)]
    [again] = client.list_sweeps(limit=1).sweeps
    assert again.id == first.id and again.state is JobState.COMPLETED  # the same sweep, resumed
    after = {r.index: r.updated_at for r in client.sweep_indexes(first.id).indexes}
    assert all(after[i] == at for i, at in done.items())  # what had completed did not run again
    assert client.map(first_fast, range(12), **options) == [x * x for x in range(12)]
    [fresh] = client.list_sweeps(limit=1).sweeps
    assert fresh.id != first.id and fresh.state is JobState.COMPLETED  # completed once: a new run
