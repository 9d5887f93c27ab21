"""Job files (``cli.jobfile``): parsing, templating, ``--set``, validation with lines, the schema; and
``shoal job run/validate/schema`` and ``--output`` through typer's CliRunner against the fake client."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import jobfile
from cli.errors import EXIT_USAGE, CLIError
from cli.main import app
from jobs import JobSpec
from jobs.sweep import SweepSpec
from tests.unit.test_cli import JOB_ID, NOW, FakeClient, describe_of, run
from tests.unit.test_cli import fake as fake  # the fixture

REPO = Path(__file__).resolve().parents[2]
DOCKER_JOB = """\
engine:
  name: docker
  image: ubuntu:24.04
  entrypoint: [echo]
  args: [hello, "${WHO}"]
resources:
  cpu: 2
  memory: 512MiB
"""


def load(text: str, variables: dict[str, str] | None = None, sets: list[str] | None = None) -> jobfile.JobFile:
    return jobfile.load(text, "job.yaml", variables or {}, sets or [])


def problems(text: str, variables: dict[str, str] | None = None, sets: list[str] | None = None) -> list[str]:
    with pytest.raises(CLIError) as info:
        load(text, variables, sets)
    assert info.value.code == EXIT_USAGE
    return list(info.value.lines)


# -- parsing and validation --------------------------------------------------------------------


def test_a_yaml_job_file_is_the_api_job_spec() -> None:
    spec = load(DOCKER_JOB, {"WHO": "world"}).spec
    assert spec == JobSpec(engine={"name": "docker", "image": "ubuntu:24.04", "entrypoint": ["echo"],
                                   "args": ["hello", "world"]}, resources={"cpu": 2, "memory": 512 * 1024**2})


def test_json_is_read_too() -> None:
    data = {"engine": {"name": "noop", "delay": 0.5}, "deal": {"concurrency": 3, "confidence": 2}}
    spec = load(json.dumps(data)).spec
    assert isinstance(spec, JobSpec) and spec.deal.concurrency == 3 and spec.engine.delay == 0.5


def test_a_file_with_a_job_and_axes_is_a_sweep() -> None:
    text = "job:\n  engine: {name: noop}\ngrid:\n  x: [1, 2, 3]\n  flag: [true]\nzip: {a: [0.5, b]}\n"
    job_file = load(text)
    assert job_file.is_sweep and isinstance(job_file.spec, SweepSpec)
    assert job_file.spec.count == 6  # 3 x 1 x 2
    assert job_file.spec.grid == {"x": ["1", "2", "3"], "flag": ["true"]}  # as the index's environment reads them
    assert job_file.spec.zip == {"a": ["0.5", "b"]}


def test_numbers_where_the_spec_wants_text_become_text() -> None:
    spec = load("engine: {name: docker, image: x, args: [--n, 100]}\nenv: {SEED: 42, DEBUG: false}\n").spec
    assert spec.engine.args == ["--n", "100"] and spec.env == {"SEED": "42", "DEBUG": "false"}


def test_each_problem_names_its_field_and_line() -> None:
    text = "engine:\n  name: docker\n  imag: ubuntu\nresources:\n  cpu: lots\ndeal: {concurrency: 1, confidence: 3}\n"
    assert problems(text) == [
        "job.yaml:1: engine.image: Field required",
        "job.yaml:3: engine.imag: unknown field",
        "job.yaml:5: resources.cpu: Input should be a valid number, unable to parse string as a number",
        "job.yaml:6: deal: confidence cannot exceed concurrency",
    ]


def test_a_sweeps_job_problems_have_their_lines_too() -> None:
    text = "job:\n  engine: {name: noop}\n  timeout: -1\ngrid: {x: [1]}\n"
    assert problems(text) == ["job.yaml:3: job.timeout: Input should be greater than 0"]


def test_axes_beside_a_job_spec_hint_at_the_sweep_shape() -> None:
    [line] = problems("engine: {name: noop}\ngrid: {x: [1, 2]}\n")
    assert line.startswith("job.yaml:2: grid: unknown field (a sweep spec puts the job under job:")


def test_a_sweeps_own_checks_are_one_line_each() -> None:
    lines = problems("job: {engine: {name: noop}, deal: {concurrency: 2}}\ngrid: {x: [1], SHOAL_INDEX: [2]}\n")
    assert lines == ["job.yaml: SHOAL_INDEX is set by Shoal for every index",
                     "job.yaml: a sweep runs each index once: leave concurrency and min_bids unset"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("engine: {name: noop\n", "job.yaml:2: not valid YAML or JSON: expected ',' or '}'"),
        ("", "job.yaml: expected a mapping"),
        ("- engine: {name: noop}\n", "job.yaml: expected a mapping"),
        ("engine: {name: cobol}\n", "job.yaml:1: engine: Input tag 'cobol' found using 'name' does not match"),
    ],
)
def test_bad_files_get_one_clear_line(text: str, expected: str) -> None:
    [line] = problems(text)
    assert line.startswith(expected), line


def test_a_huge_file_is_refused_before_parsing() -> None:
    with pytest.raises(CLIError, match="larger than 1024 KiB"):
        jobfile.parse("#" * (jobfile.MAX_FILE_BYTES + 1), "big.yaml")


def test_an_alias_bomb_is_refused_not_expanded() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{c}: &{c} [{', '.join(['*' + p] * 10)}]" for p, c in zip("abcdefg", "bcdefgh", strict=True)]
    with pytest.raises(CLIError, match="more than 200000 values"):  # 10**8 values at h
        load("engine: {name: noop}\n" + "\n".join(lines))


def test_an_alias_bomb_is_refused_while_parsing_even_where_nothing_else_walks() -> None:
    """A description's parts beside its spec are never templated: the bound is counted in ``parse``."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i + 1}: &a{i + 1} [{', '.join([f'*a{i}' if i else '*a'] * 10)}]" for i in range(25)]  # 10**26
    text = "job: {spec: {engine: {name: noop}}}\nexecutions: {" + ", ".join(lines) + "}\n"
    with pytest.raises(CLIError, match=r"description\.yaml: more than 200000 values") as info:
        jobfile.parse(text, "description.yaml")
    assert info.value.code == EXIT_USAGE


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "engine: &e {name: noop, args: [*e]}\n", "a: &a {b: [x, *a]}\n"])
def test_an_alias_inside_its_own_anchor_is_refused_at_once(tmp_path: Path, text: str) -> None:
    """`a: &a [*a]` is an infinitely deep tree: walking it grew memory until the process was killed."""
    import resource
    import subprocess
    import sys

    path = tmp_path / "job.yaml"
    path.write_text(text)
    limit = 512 * 1024**2  # ample for the CLI; before the fix it grew past this in seconds

    def bounded() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {"SHOAL_HOME": str(tmp_path), "SHOAL_CONFIG": os.devnull, "PATH": "/usr/bin:/bin"}
    for command in ("validate", "run"):
        result = subprocess.run([sys.executable, "-m", "cli.main", "job", command, str(path)], capture_output=True,
                                text=True, env=env, cwd=REPO, timeout=60, preexec_fn=bounded)  # fmt: skip
        assert (result.returncode, result.stderr) == (
            EXIT_USAGE, f"Error: {path}: nested more than 32 levels deep (or a YAML alias inside its own anchor)\n")
        assert result.stdout == ""


@pytest.mark.parametrize("depth", [33, 1_000])
def test_a_file_nested_too_deeply_is_one_usage_error(fake: FakeClient, tmp_path: Path, depth: int) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("engine: {name: noop}\nenv: " + "[" * depth + "]" * depth + "\n")
    result = run("job", "validate", str(path))
    assert result.exit_code == EXIT_USAGE
    assert result.stderr == f"Error: {path}: nested more than 32 levels deep (or a YAML alias inside its own anchor)\n"
    assert fake.made == []


def test_secret_values_never_appear_in_errors() -> None:
    text = "engine: {name: noop}\nsecret_env: {TOKEN: [hunter2-secret]}\n"
    assert all("hunter2" not in line for line in problems(text))


# -- templating --------------------------------------------------------------------------------


def test_variables_come_from_the_mapping_and_dollar_dollar_escapes() -> None:
    data = {"a": "${X}-${Y}", "b": ["$$HOME", "$HOME", "$${X}"], "${X}": 1}
    out = jobfile.substitute(data, {"X": "1", "Y": "two"})
    assert out == {"a": "1-two", "b": ["$HOME", "$HOME", "${X}"], "${X}": 1}  # a lone $NAME is the job's own


def test_an_undefined_variable_is_named_with_its_field_and_line() -> None:
    text = "engine: {name: noop}\nenv:\n  A: ${NOPE}\n  B: ${ALSO}-${NOPE}\n  C: ${NOPE}\n"
    assert problems(text) == [
        "job.yaml:3: env.A: undefined variable NOPE: give --var NOPE=VALUE or set it in the environment "
        "(write $$ for a literal $)",
        "job.yaml:4: env.B: undefined variable ALSO: give --var ALSO=VALUE or set it in the environment "
        "(write $$ for a literal $)",
        "job.yaml:4: env.B: undefined variable NOPE: give --var NOPE=VALUE or set it in the environment "
        "(write $$ for a literal $)",
        "job.yaml:5: env.C: undefined variable NOPE: give --var NOPE=VALUE or set it in the environment "
        "(write $$ for a literal $)",
    ]


def test_a_bad_variable_name_is_an_error() -> None:
    with pytest.raises(CLIError, match=r"job.yaml: x.0: \$\{1x\} is not a variable name"):
        jobfile.substitute({"x": ["${1x}"]}, {}, "job.yaml")


def test_var_flags() -> None:
    assert jobfile.parse_variables(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(CLIError, match="expected NAME=VALUE"):
        jobfile.parse_variables(["A"])


def test_templated_numbers_still_validate() -> None:
    spec = load("engine: {name: noop}\nresources: {cpu: '${CPU}'}\ntimeout: ${T}\n", {"CPU": "1.5", "T": "30"}).spec
    assert spec.resources.cpu == 1.5 and spec.timeout == 30


# -- --set -------------------------------------------------------------------------------------


def test_set_takes_dotted_paths_and_yaml_values() -> None:
    data = {"engine": {"name": "noop"}, "inputs": [{"source": "ipfs://a", "path": "/a"}]}
    out = jobfile.override(data, ["resources.cpu=2", "deal.concurrency=3", "cache=false", "inputs.0.path=/b",
                                  "engine.delay=0.5", "env.NOTE=a: b", "engine.args=[x, 1]"], sweep=False)
    assert out == {"engine": {"name": "noop", "delay": 0.5, "args": ["x", 1]},
                   "inputs": [{"source": "ipfs://a", "path": "/b"}], "resources": {"cpu": 2},
                   "deal": {"concurrency": 3}, "cache": False, "env": {"NOTE": "a: b"}}
    assert data == {"engine": {"name": "noop"}, "inputs": [{"source": "ipfs://a", "path": "/a"}]}  # a copy


def test_set_in_a_sweep_reaches_the_job_unless_it_names_a_sweep_key() -> None:
    data = {"job": {"engine": {"name": "noop"}}, "grid": {"x": ["1"]}}
    out = jobfile.override(data, ["resources.cpu=2", "grid.x=[1, 2]", "success=any"], sweep=True)
    assert out == {"job": {"engine": {"name": "noop"}, "resources": {"cpu": 2}}, "grid": {"x": [1, 2]},
                   "success": "any"}


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("resources.cpu", "expected KEY.PATH=VALUE"),
        ("a..b=1", "expected KEY.PATH=VALUE"),
        ("engine.name.x=1", "engine.name is a value, not a mapping"),
        ("inputs.3.path=/x", "inputs is a list of 0: give an index below that"),
    ],
)
def test_bad_set_is_a_clear_error(assignment: str, message: str) -> None:
    with pytest.raises(CLIError, match=message):
        jobfile.override({"engine": {"name": "noop"}, "inputs": []}, [assignment], sweep=False)


def test_set_is_validated_like_the_file_and_blamed() -> None:
    text = "engine: {name: noop}\nresources:\n  cpu: 1\ntimeout: 0\n"
    assert problems(text, sets=["resources.cpu=-1"]) == [
        "job.yaml (--set): resources.cpu: Input should be greater than or equal to 0",
        "job.yaml:4: timeout: Input should be greater than 0"]


# -- descriptions ------------------------------------------------------------------------------


def test_a_description_gives_back_its_spec_as_recorded() -> None:
    spec = JobSpec(engine={"name": "docker", "image": "x", "args": ["${NOT_A_TEMPLATE}"]}, env={"A": "1"})
    text = yaml.safe_dump(describe_of(spec).model_dump(mode="json"))
    job_file = load(text)
    assert job_file.spec == spec and job_file.from_description
    assert load(text, sets=["env.A=2"]).spec.env == {"A": "2"}


def test_a_description_problem_names_its_line() -> None:
    text = "job:\n  id: j-1\n  spec:\n    engine: {name: noop}\n    timeout: 0\nexecutions: []\n"
    assert problems(text) == ["job.yaml:5: timeout: Input should be greater than 0"]


# -- the schema --------------------------------------------------------------------------------


def test_the_schema_comes_from_the_models_and_accepts_the_example() -> None:
    schema = jobfile.schema()
    assert {d["$ref"].rsplit("/", 1)[-1] for d in schema["anyOf"]} == {"JobSpec", "SweepSpec"}
    assert schema["$defs"]["JobSpec"]["properties"].keys() == JobSpec.model_fields.keys()
    assert schema["$defs"]["SweepSpec"]["properties"].keys() == SweepSpec.model_fields.keys()
    jsonschema_rs = pytest.importorskip("jsonschema_rs")  # schemathesis brings it (the dev extra)
    example = yaml.safe_load((REPO / "examples/job-files/sweep.yaml").read_text().replace("${SAMPLES}", "5"))
    assert jsonschema_rs.is_valid(schema, jobfile.as_texts(example, sweep=True))
    assert jsonschema_rs.is_valid(schema, {"engine": {"name": "docker", "image": "x"}, "resources": {"cpu": 1}})
    assert not jsonschema_rs.is_valid(schema, {"engine": {"name": "noop"}, "bogus": 1})
    assert not jsonschema_rs.is_valid(schema, {"engine": {"name": "cobol"}})


def test_the_example_sweep_file_validates() -> None:
    text = (REPO / "examples/job-files/sweep.yaml").read_text()
    spec = load(text, {"SAMPLES": "20000"}).spec
    assert isinstance(spec, SweepSpec) and spec.count == 6 and spec.grid["samples"] == ["1000", "20000"]


# -- the commands ------------------------------------------------------------------------------


def test_job_run_submits_the_file_and_prints_the_jobs_stdout(fake: FakeClient, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(DOCKER_JOB)
    result = run("job", "run", str(path), "--var", "WHO=you", "--set", "deal.concurrency=2", env={"WHO": "env"})
    assert result.exit_code == 0, result.output
    assert result.stdout == "hello from the job\n"
    spec = fake.submitted[0][0]
    assert spec.engine.args == ["hello", "you"] and spec.deal.concurrency == 2  # --var wins over the environment


def test_job_run_reads_stdin_and_takes_the_environment(fake: FakeClient) -> None:
    result = CliRunner().invoke(app, ["job", "run", "-", "--json"], input=DOCKER_JOB, env={"WHO": "env"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["job"]["spec"]["engine"]["args"] == ["hello", "env"]


def test_job_run_with_a_bad_file_never_connects(fake: FakeClient, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("engine: {name: noop}\ntimeout: -5\n")
    result = run("job", "run", str(path))
    assert result.exit_code == EXIT_USAGE
    assert result.stderr == f"Error: {path}:2: timeout: Input should be greater than 0\n"
    assert fake.made == [] and fake.submitted == []


def test_job_run_context_mounts_a_packed_directory(fake: FakeClient, tmp_path: Path) -> None:
    from jobs import JobState
    from tests.unit.test_cli_sweeps import description, sweep_of

    (tmp_path / "prog").mkdir()
    (tmp_path / "prog" / "main.py").write_text("print(1)\n")
    (tmp_path / "job.yaml").write_text("job:\n  engine: {name: python, main: main.py}\ngrid: {x: [1, 2]}\n")
    sent: list[SweepSpec] = []

    def submit_sweep(spec: SweepSpec, *, idempotency_key: str | None = None) -> object:
        sent.append(spec)
        return description(sweep_of(spec, JobState.PENDING))

    fake.submit_sweep = submit_sweep  # type: ignore[attr-defined]
    result = run("job", "run", str(tmp_path / "job.yaml"), "--context", str(tmp_path / "prog"), "--no-wait")
    assert result.exit_code == 0, result.output
    assert len(fake.contexts) == 1  # the directory, packed
    [sweep] = sent  # its template has the context mounted
    assert [(i.source, i.path) for i in sweep.job.inputs] == [(f"ipfs://{fake.upload_context(b'')}", "/context")]


def test_job_run_refuses_id_only_with_json_first(fake: FakeClient) -> None:
    result = run("job", "run", "/no/such/file", "--id-only", "--json")
    assert result.exit_code == EXIT_USAGE and "--id-only and --json" in result.stderr and fake.made == []


def test_job_validate_prints_one_line(fake: FakeClient) -> None:
    result = run("job", "validate", str(REPO / "examples/job-files/sweep.yaml"), "--var", "SAMPLES=9")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and "a sweep of 6 indexes (grid samples(2) seed(3))" in result.stdout
    assert "128 MiB memory, 1 GiB disk (the default" in result.stdout  # what each index gets, not "0 B disk"
    assert fake.made == []


def test_job_schema_is_json(fake: FakeClient) -> None:
    result = run("job", "schema")
    assert result.exit_code == 0 and json.loads(result.stdout) == jobfile.schema()


def test_describe_output_yaml_is_a_job_file(fake: FakeClient) -> None:
    fake.spec = JobSpec(engine={"name": "python", "code": "print(1)\nprint(2)\n"}, resources={"cpu": 0.5})
    result = run("describe", JOB_ID, "--output", "yaml")
    assert result.exit_code == 0, result.output
    assert "code: |" in result.stdout  # multi-line code stays readable
    assert load(result.stdout).spec == fake.spec
    assert yaml.safe_load(result.stdout) == json.loads(run("describe", JOB_ID, "--json").stdout)


@pytest.mark.parametrize("command", [["list"], ["describe", JOB_ID], ["id"], ["peers"], ["nodes"], ["version"]])
def test_read_commands_take_output_json_yaml_and_table(fake: FakeClient, command: list[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW)  # the tables show ages
    as_json = run(*command, "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(run(*command, "--output", "json").stdout) == json.loads(as_json.stdout)
    assert yaml.safe_load(run(*command, "-o", "yaml").stdout) == json.loads(as_json.stdout)
    assert run(*command, "--output", "table").stdout == run(*command).stdout
    clash = run(*command, "--json", "--output", "yaml")
    assert clash.exit_code == EXIT_USAGE and "--json and --output yaml disagree" in clash.stderr
    assert run(*command, "--output", "xml").exit_code == EXIT_USAGE
