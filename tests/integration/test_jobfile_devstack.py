"""Job files and ``--output`` through the ``shoal`` command, against one real 2-node devstack.

Like ``test_cli_devstack``: the stack is ``shoal devstack`` itself (no Kubo), found through its
state file, stopped with SIGINT and required to stop cleanly. Python jobs run on the nodes' real
Pyodide executor; every invocation is checked for a traceback.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.rogue import free_base_port
from tests.integration.test_cli_devstack import SHOAL, Stack, _assert_no_traceback, cli_devstack

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "job-files" / "sweep.yaml"
JOB_ID = re.compile(r"\bj-[0-9a-f]{32}\b")
SWEEP_ID = re.compile(r"\bs-[0-9a-f]{32}\b")
JOB_FILE = """\
# a job file: the API's job spec, templated
engine:
  name: python
  code: |
    import os
    print(os.environ["GREETING"], os.environ["WHO"], "secret of", len(os.environ["TOKEN"]), "characters")
env:
  GREETING: ${GREETING}
  WHO: $${literal}
secret_env:
  TOKEN: ${TOKEN}
resources:
  cpu: 0.5
  memory: 128MiB
timeout: 120
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with cli_devstack(tmp_path_factory.mktemp("jobfile-home"), nodes=2, base_port=free_base_port(2)) as devstack:
        yield devstack


def shoal(stack: Stack, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
          timeout: float = 180) -> subprocess.CompletedProcess[str]:  # fmt: skip
    result = subprocess.run([SHOAL, *args], capture_output=True, text=True, input=stdin,
                            env={**stack.env, **(env or {})}, timeout=timeout, cwd=stack.home)  # fmt: skip
    _assert_no_traceback(result.stdout, result.stderr)
    return result


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


def described(stack: Stack, some_id: str) -> dict:
    return json.loads(ok(shoal(stack, "describe", some_id, "--json")).stdout)


def test_a_job_file_runs_with_its_variables_and_secret(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(JOB_FILE)
    result = ok(shoal(stack, "job", "run", str(path), "--var", "GREETING=hello", env={"TOKEN": "hunter2"}))
    assert result.stdout == "hello ${literal} secret of 7 characters\n"  # the job's stdout, and nothing else
    job_id = JOB_ID.search(result.stderr).group(0)
    spec = described(stack, job_id)["job"]["spec"]
    assert spec["env"] == {"GREETING": "hello", "WHO": "${literal}"} and spec["resources"]["cpu"] == 0.5
    shown = ok(shoal(stack, "describe", job_id, "--output", "yaml")).stdout
    assert "hunter2" not in shown and yaml.safe_load(shown)["job"]["spec"]["secret_env"] == {}  # never comes back


def test_an_undefined_variable_fails_before_submitting(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(JOB_FILE)
    before = json.loads(ok(shoal(stack, "list", "--json")).stdout)["total"]
    result = shoal(stack, "job", "run", str(path), env={"TOKEN": "x"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (f"Error: {path}:8: env.GREETING: undefined variable GREETING: give --var "
                                     "GREETING=VALUE or set it in the environment (write $$ for a literal $)")
    assert json.loads(ok(shoal(stack, "list", "--json")).stdout)["total"] == before


def test_a_json_job_from_stdin_with_set_overrides(stack: Stack) -> None:
    job = {"engine": {"name": "python", "code": "import os; print(os.environ['N'])"}, "env": {"N": "1"}}
    result = ok(shoal(stack, "job", "run", "-", "--set", "env.N=42", "--set", "deal.concurrency=2",
                      "--set", "deal.confidence=2", "--json", stdin=json.dumps(job)))
    desc = json.loads(result.stdout)  # --json: one JSON document, as for the other run commands
    assert desc["job"]["state"] == "completed"
    assert desc["job"]["spec"]["env"] == {"N": "42"} and desc["job"]["spec"]["deal"]["concurrency"] == 2
    done = [x for x in desc["executions"] if x["state"] == "completed"]
    assert len(done) == 2 and {x["result"]["stdout"] for x in done} == {"42\n"}  # verified on both nodes


def test_the_example_sweep_file_runs_every_index(stack: Stack) -> None:
    result = ok(shoal(stack, "job", "run", str(EXAMPLE), "--var", "SAMPLES=2000"))
    assert "6/6 completed" in result.stderr
    sweep_id = SWEEP_ID.search(result.stderr).group(0)
    assert described(stack, sweep_id)["sweep"]["spec"]["grid"] == {"samples": ["1000", "2000"], "seed": ["1", "2", "3"]}
    for index, (samples, seed) in enumerate([(1000, 1), (1000, 2), (1000, 3), (2000, 1), (2000, 2), (2000, 3)]):
        stdout = ok(shoal(stack, "sweep", "logs", sweep_id, str(index))).stdout
        assert stdout.startswith(f"samples={samples} seed={seed} pi~3."), stdout


def test_validate_says_what_a_file_would_run_or_where_it_is_wrong(stack: Stack, tmp_path: Path) -> None:
    result = ok(shoal(stack, "job", "validate", str(EXAMPLE), "--var", "SAMPLES=10"))
    assert result.stdout.count("\n") == 1 and "a sweep of 6 indexes (grid samples(2) seed(3))" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  name: python\n  code: print(1)\nresources:\n  memory: lots\n")
    result = shoal(stack, "job", "validate", str(bad))
    assert result.returncode == 2
    assert result.stderr == f"Error: {bad}:5: resources.memory: cannot read size 'lots': use bytes or a unit such as " \
                            "512MiB, 2GB\n"


def test_the_schema_is_json_schema(stack: Stack) -> None:
    schema = json.loads(ok(shoal(stack, "job", "schema")).stdout)
    assert schema["title"] == "Shoal job file" and "JobSpec" in schema["$defs"] and "SweepSpec" in schema["$defs"]


def test_describe_as_yaml_runs_the_same_job_again(stack: Stack, tmp_path: Path) -> None:
    first = ok(shoal(stack, "run", "python", "-c", "print('again')", "--env", "A=1", "--cpu", "0.25", "--id-only"))
    job_id = first.stdout.strip()
    (tmp_path / "job.yaml").write_text(ok(shoal(stack, "describe", job_id, "--output", "yaml")).stdout)
    again = ok(shoal(stack, "job", "run", str(tmp_path / "job.yaml"), "--no-cache", "--json"))
    desc = json.loads(again.stdout)
    assert desc["job"]["id"] != job_id and desc["job"]["state"] == "completed"
    assert desc["job"]["spec"] == described(stack, job_id)["job"]["spec"]
    assert ok(shoal(stack, "logs", desc["job"]["id"])).stdout == "again\n"


def test_describe_of_a_sweep_as_yaml_runs_the_same_sweep_again(stack: Stack, tmp_path: Path) -> None:
    first = ok(shoal(stack, "run", "noop", "--param", "x=1,2", "--id-only"))
    sweep_id = first.stdout.strip()
    (tmp_path / "sweep.yaml").write_text(ok(shoal(stack, "describe", sweep_id, "-o", "yaml")).stdout)
    again = json.loads(ok(shoal(stack, "job", "run", str(tmp_path / "sweep.yaml"), "--json")).stdout)
    assert again["sweep"]["id"] != sweep_id and again["sweep"]["state"] == "completed"
    assert again["sweep"]["spec"] == described(stack, sweep_id)["sweep"]["spec"]


@pytest.mark.parametrize("command", [("list",), ("nodes",), ("peers",), ("id",), ("version",), ("sweep", "list")])
def test_read_commands_print_json_yaml_or_a_table(stack: Stack, command: tuple[str, ...]) -> None:
    as_json = json.loads(ok(shoal(stack, *command, "--json")).stdout)
    assert json.loads(ok(shoal(stack, *command, "--output", "json")).stdout).keys() == as_json.keys()
    assert yaml.safe_load(ok(shoal(stack, *command, "--output", "yaml")).stdout).keys() == as_json.keys()
    table = ok(shoal(stack, *command, "--output", "table")).stdout
    with pytest.raises(ValueError):
        json.loads(table)
    wrong = shoal(stack, *command, "--output", "xml")
    assert wrong.returncode == 2 and "xml" in wrong.stderr


def test_describe_indexes_and_events_of_a_sweep_take_output_too(stack: Stack) -> None:
    sweep_id = ok(shoal(stack, "run", "noop", "--param", "y=a,b,c", "--id-only")).stdout.strip()
    as_yaml = yaml.safe_load(ok(shoal(stack, "sweep", "indexes", sweep_id, "-o", "yaml")).stdout)
    assert [r["index"] for r in as_yaml["indexes"]] == [0, 1, 2]
    assert yaml.safe_load(ok(shoal(stack, "describe", sweep_id, "-o", "yaml")).stdout)["sweep"]["count"] == 3
    events = list(yaml.safe_load_all(ok(shoal(stack, "events", sweep_id, "-o", "yaml")).stdout))
    assert events and all(e["job_id"] == sweep_id for e in events)
    assert "INDEX" in ok(shoal(stack, "sweep", "indexes", sweep_id, "-o", "table")).stdout
