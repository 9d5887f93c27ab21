"""``[run] gpu`` in the config file, beside ``retries`` and ``queue_timeout``: a default for ``--gpu``.

Checked as the other whole-number keys are; the job spec bounds it (``jobs.spec.MAX_GPUS``) as it
bounds the flag. The CLI tests use ``test_cli``'s fake SDK client, as ``test_config`` does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.config import ConfigError, parse_config
from tests.unit import test_cli
from tests.unit.test_cli import FakeClient, run, submitted

fake = test_cli.fake  # the fake SDK client, a fixture

FILE = Path("/etc/shoal/config.toml")


def test_gpu_retries_and_queue_timeout_are_run_defaults() -> None:
    config = parse_config("[run]\ngpu = 2\nretries = 3\nqueue_timeout = 600\n", FILE)
    assert config.run_defaults() == {"gpu": 2, "retries": 3, "queue_timeout": 600.0}


@pytest.mark.parametrize(("text", "problem"), [
    ("[run]\ngpu = -1\n", "[run] gpu: expected a whole number >= 0, got -1"),
    ("[run]\ngpu = 1.5\n", "[run] gpu: expected a whole number >= 0, got 1.5"),
    ("[run]\ngpu = true\n", "[run] gpu: expected a whole number >= 0, got True"),
    ("[run]\ngpu = 'one'\n", "[run] gpu: expected a whole number >= 0, got 'one'"),
    ("[run]\nretries = -2\n", "[run] retries: expected a whole number >= 0, got -2"),
    ("[run]\nqueue_timeout = 0\n", "[run] queue_timeout: expected a number of seconds > 0, or a string such as "
                                    '"10m" or "1h30m", got 0'),
    ("[run]\ngpus = 1\n", "[run] gpus: unknown key (known here: cpu, memory, disk, timeout, "
                    "concurrency, confidence, min_bids, retries, queue_timeout, gpu, wait, wait_timeout, cache)"),
])  # fmt: skip
def test_a_bad_value_is_one_problem_naming_the_file_and_key(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, FILE)
    (line,) = raised.value.lines
    assert line.startswith(f"{FILE}: {problem}"), line
    assert raised.value.code == 2


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.toml"
    monkeypatch.setenv("SHOAL_CONFIG", str(path))
    monkeypatch.delenv("SHOAL_OUTPUT", raising=False)
    return path


def test_jobs_ask_for_the_configured_gpus(fake: FakeClient, config_file: Path) -> None:
    config_file.write_text("[run]\ngpu = 1\nretries = 2\nwait = false\n")
    result = run("docker", "run", "busybox", "--", "nvidia-smi")
    assert result.exit_code == 0, result.output
    spec = submitted(fake)
    assert (spec.resources.gpu, spec.retries) == (1, 2)


def test_the_gpu_flag_wins_over_the_config_file(fake: FakeClient, config_file: Path) -> None:
    config_file.write_text("[run]\ngpu = 2\nwait = false\n")
    assert run("docker", "run", "--gpu", "0", "busybox", "--", "true").exit_code == 0
    assert submitted(fake).resources.gpu == 0


def test_more_gpus_than_a_job_may_have_is_one_error(fake: FakeClient, config_file: Path) -> None:
    config_file.write_text("[run]\ngpu = 65\nwait = false\n")
    result = run("docker", "run", "busybox", "--", "true")
    assert result.exit_code == 2
    assert "--gpu" in result.output and "64" in result.output and "Traceback" not in result.output
