"""A sweep whose spec is over the 1 MiB a node accepts is refused by the CLI with a way to make it fit."""

from __future__ import annotations

from tests.unit.test_cli import run
from tests.unit.test_cli_sweeps import FakeSweepClient, error_lines, submitted_sweep
from tests.unit.test_cli_sweeps import fake as fake  # the fixture


def test_a_range_too_big_to_send_says_how_to_split_it(fake: FakeSweepClient) -> None:
    result = run("run", "noop", "--param", "x=0..199999", "--no-wait")
    assert result.exit_code == 2
    assert error_lines(result) == [
        "--param x=0..199999 expands to 200,000 values (about 1.6 MiB of spec, over the 1 MiB limit): split it "
        "into two --param grids, e.g. --param x_hi=0..199 --param x_lo=0..999 with x = x_hi * 1000 + x_lo "
        "computed in the job"]
    assert fake.sweeps_submitted == []
    # the split it suggests is sent: 200,000 indexes in 1,200 values
    assert run("run", "noop", "--param", "x_hi=0..199", "--param", "x_lo=0..999", "--no-wait").exit_code == 0
    assert submitted_sweep(fake).count == 200_000
