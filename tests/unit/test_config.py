"""The config file (``cli.config``): parsing, precedence, bad files; and what the CLI does with it.

The CLI tests drive ``shoal`` through typer's CliRunner against the fake SDK client of
``test_cli``; ``tests/integration/test_config_devstack.py`` runs the same against a real node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.config import (
    Config,
    ConfigError,
    Setting,
    effective,
    load_config,
    output_format,
    parse_config,
    resolve,
)
from cli.options import flag_defaults
from jobs import JobSpec
from tests.unit import test_cli
from tests.unit.test_cli import FakeClient, run, submitted

fake = test_cli.fake  # the fake SDK client, a fixture

FILE = Path("/etc/shoal/config.toml")
FULL = """
api = "https://node.example.org:8700"
ca_cert = "certs/node.pem"
output = "yaml"

[run]
cpu = 0.5
memory = "1GiB"
disk = 1048576
timeout = 600
concurrency = 3
confidence = 2
min_bids = 0
wait = false
wait_timeout = 2.5
cache = true
"""


def test_a_full_file_gives_each_setting_as_its_flag_would() -> None:
    config = parse_config(FULL, FILE)
    assert config.get("api") == "https://node.example.org:8700"
    assert config.get("ca_cert") == Path("/etc/shoal/certs/node.pem")  # relative to the file's folder
    assert config.get("output") == "yaml"
    assert config.run_defaults() == {
        "cpu": "0.5", "memory": "1GiB", "disk": "1048576", "timeout": 600.0, "concurrency": 3, "confidence": 2,
        "min_bids": 0, "wait": False, "wait_timeout": 2.5, "cache": True,
    }  # fmt: skip


def test_times_as_the_flags_take_them() -> None:
    config = parse_config('[run]\ntimeout = "1h30m"\nwait_timeout = "10m"\nqueue_timeout = "2d"\n', FILE)
    assert config.run_defaults() == {"timeout": 5400.0, "wait_timeout": 600.0, "queue_timeout": 172800.0}


def test_an_empty_file_sets_nothing() -> None:
    assert parse_config("", FILE).values == {}
    assert parse_config("# only a comment\n[run]\n", FILE).run_defaults() == {}


def test_the_api_as_host_and_port_like_the_flag() -> None:
    assert parse_config('api = "127.0.0.1:8700"\n', FILE).get("api") == "127.0.0.1:8700"


def test_cpu_as_a_whole_number_or_with_a_unit() -> None:
    assert parse_config("[run]\ncpu = 2\n", FILE).run_defaults() == {"cpu": "2"}
    assert parse_config('[run]\ncpu = "500m"\n', FILE).run_defaults() == {"cpu": "500m"}


@pytest.mark.parametrize(("text", "problem"), [
    ("api = \n", "not valid TOML: Invalid value (at line 1, column 7)"),
    ("[run\n", "not valid TOML"),
    ("apy = 'http://x'\n", "apy: unknown key (known here: api, ca_cert, output, [run])"),
    ("[run]\ncpus = 1\n", "[run] cpus: unknown key (known here: cpu, memory, disk, timeout, concurrency"),
    ("[nodes]\nx = 1\n", "nodes: unknown key"),
    ("run = 3\n", "run: expected a table ([run])"),
    ("api = 'ftp://x'\n", "api: expected an http:// or https:// URL (or HOST:PORT), got 'ftp://x'"),
    ("api = 8700\n", "api: expected an http:// or https:// URL (or HOST:PORT), got 8700"),
    ("output = 'xml'\n", "output: expected one of table, json, yaml, got 'xml'"),
    ("ca_cert = ''\n", "ca_cert: expected a non-empty string, got ''"),
    ("[run]\nconcurrency = 'three'\n", "[run] concurrency: expected a whole number >= 0, got 'three'"),
    ("[run]\nconcurrency = true\n", "[run] concurrency: expected a whole number >= 0, got True"),
    ("[run]\nconfidence = -1\n", "[run] confidence: expected a whole number >= 0, got -1"),
    ("[run]\ntimeout = -5\n", '[run] timeout: expected a number of seconds > 0, or a string such as "10m" or '
                              '"1h30m", got -5'),
    ("[run]\ntimeout = inf\n", "[run] timeout: expected a number of seconds > 0, or a string"),
    ("[run]\ntimeout = '10 minutes'\n", "[run] timeout: expected a number of seconds > 0, or a string"),
    ("[run]\nwait = 'yes'\n", "[run] wait: expected true or false, got 'yes'"),
    ("[run]\ncpu = true\n", "[run] cpu: expected a number or a string"),
    ("[run]\nmemory = [1]\n", "[run] memory: expected a number or a string"),
])  # fmt: skip
def test_a_bad_file_is_one_problem_naming_the_file_and_key(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, FILE)
    (line,) = raised.value.lines
    assert line.startswith(f"{FILE}: {problem}"), line
    assert "\n" not in line
    assert raised.value.code == 2


def test_no_file_at_the_default_path_is_an_empty_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_CONFIG", raising=False)
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path))
    assert load_config() == Config(tmp_path / "config.toml")
    (tmp_path / "config.toml").write_text("[run]\nconcurrency = 2\n")
    assert load_config().run_defaults() == {"concurrency": 2}


def test_a_file_named_by_shoal_config_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_CONFIG", str(tmp_path / "typo.toml"))
    with pytest.raises(ConfigError, match=r"typo\.toml: no such file \(named by \$SHOAL_CONFIG\)"):
        load_config()
    monkeypatch.setenv("SHOAL_CONFIG", os.devnull)  # how to say "no config"
    assert load_config().values == {}


def test_an_unreadable_file_is_one_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: Is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "config.toml"
    binary.write_bytes(b"api = '\xff'\n")
    with pytest.raises(ConfigError, match=r"config\.toml: not UTF-8 text"):
        load_config(binary)


def test_precedence_flag_then_environment_then_file_then_default() -> None:
    config = parse_config('api = "http://from-file:1"\noutput = "json"\n', FILE)
    flag = {"api": Setting("api", "http://from-flag:1", "flag --api")}
    env = {"SHOAL_API": "http://from-env:1", "SHOAL_OUTPUT": "yaml"}
    assert resolve("api", given=flag, env=env, config=config) == flag["api"]
    assert resolve("api", env=env, config=config) == Setting("api", "http://from-env:1", "$SHOAL_API")
    assert resolve("api", env={}, config=config) == Setting("api", "http://from-file:1", str(FILE))
    assert resolve("api", env={}, config=Config(FILE)) == Setting("api", None, "default")
    assert output_format(env=env, config=config) == "yaml"
    assert output_format(env={}, config=config) == "json"
    assert output_format(env={}, config=Config(FILE)) == "table"


def test_a_bad_shoal_output_is_one_problem() -> None:
    with pytest.raises(ConfigError, match=r"^\$SHOAL_OUTPUT: expected one of table, json, yaml, got 'xml'$"):
        output_format(env={"SHOAL_OUTPUT": "xml"}, config=Config(FILE))


def test_effective_lists_every_setting_with_its_source() -> None:
    config = parse_config("[run]\ncpu = 0.5\n", FILE)
    shown = {s.key: (s.value, s.source) for s in effective(flag_defaults(), env={}, config=config)}
    assert shown["api"] == (None, "default")
    assert shown["output"] == ("table", "default")
    assert shown["run.cpu"] == ("0.5", str(FILE))
    assert shown["run.wait"] == (True, "default")  # the flag's own default
    assert shown["run.timeout"] == (None, "default")  # the job spec's


# The CLI, against the fake client.


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.toml"
    monkeypatch.setenv("SHOAL_CONFIG", str(path))
    monkeypatch.delenv("SHOAL_OUTPUT", raising=False)
    return path


def test_run_flags_default_to_the_config_file(fake: FakeClient, config_file: Path) -> None:
    config_file.write_text('[run]\ncpu = 0.5\nmemory = "256MiB"\ntimeout = 90\nconcurrency = 2\nwait = false\n')
    result = run("run", "noop")
    assert result.exit_code == 0, result.output
    spec = submitted(fake)
    assert (spec.resources.cpu, spec.resources.memory, spec.timeout, spec.deal.concurrency) == (0.5, 256 * 2**20,
                                                                                                 90.0, 2)
    assert "hello from the job" not in result.stdout  # wait = false: not waited for


def test_a_flag_wins_over_the_config_file(fake: FakeClient, config_file: Path) -> None:
    config_file.write_text("[run]\ncpu = 0.5\nconcurrency = 2\nwait = false\ncache = false\n")
    result = run("run", "noop", "--cpu", "1", "--wait", "--cache")
    assert result.exit_code == 0, result.output
    spec = submitted(fake)
    assert (spec.resources.cpu, spec.deal.concurrency) == (1.0, 2)
    assert "hello from the job" in result.stdout
    assert fake.cache is True


def test_no_config_file_keeps_the_built_in_defaults(fake: FakeClient, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("SHOAL_CONFIG")
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path))
    result = run("run", "noop", "--no-wait")
    assert result.exit_code == 0, result.output
    assert submitted(fake) == JobSpec(engine={"name": "noop"})


def test_the_api_url_comes_from_flag_environment_or_file(fake: FakeClient, config_file: Path) -> None:
    config_file.write_text('api = "http://from-file:8700"\n')
    assert run("list").exit_code == 0
    assert run("list", env={"SHOAL_API": "http://from-env:8700"}).exit_code == 0
    assert run("--api", "http://from-flag:8700", "list", env={"SHOAL_API": "http://from-env:8700"}).exit_code == 0
    assert fake.made == ["http://from-file:8700", "http://from-env:8700", "http://from-flag:8700"]  # type: ignore[attr-defined]


def test_a_bad_config_file_fails_a_command_in_one_line(fake: FakeClient, config_file: Path) -> None:
    config_file.write_text("[run]\nconcurrency = 'three'\n")
    for args in (["run", "noop"], ["list"], ["config", "show"]):
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stdout == ""
        assert result.stderr == (f"Error: {config_file}: [run] concurrency: expected a whole number >= 0, "
                                 "got 'three'\n")
    assert fake.submitted == []


def test_config_show_and_path(fake: FakeClient, config_file: Path) -> None:
    config_file.write_text('output = "json"\n[run]\nwait = false\n')
    result = run("--api", "http://from-flag:1", "config", "show")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert rows["api"] == ["http://from-flag:1", "flag", "--api"]
    assert rows["ca_cert"] == ["-", "default"]
    assert rows["output"] == ["json", str(config_file)]
    assert rows["run.wait"] == ["false", str(config_file)]
    assert rows["run.cache"] == ["true", "default"]
    as_json = run("config", "show", "--json", env={"SHOAL_OUTPUT": "yaml"})
    assert as_json.exit_code == 0, as_json.output
    import json

    shown = json.loads(as_json.stdout)
    assert shown["output"] == {"value": "yaml", "source": "$SHOAL_OUTPUT"}
    assert shown["run.wait"] == {"value": False, "source": str(config_file)}
    path = run("config", "path")
    assert path.exit_code == 0 and path.stdout == f"{config_file}\n"


# Shell completion, in a real bash.


def _shoal_env(home: Path) -> dict[str, str]:
    repo = Path(__file__).resolve().parents[2]
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(repo), "SHOAL_HOME": str(home)}  # fmt: skip


def test_completion_prints_each_shells_script(tmp_path: Path) -> None:
    for shell, marker in (("bash", "complete -o default -F _shoal_completion shoal"), ("zsh", "#compdef shoal"),
                          ("fish", "complete --command shoal")):  # fmt: skip
        result = run("completion", shell)
        assert result.exit_code == 0, result.output
        assert marker in result.stdout and "_SHOAL_COMPLETE=complete_" in result.stdout
    assert run("completion", "tcsh").exit_code == 2


@pytest.mark.parametrize(("words", "offered"), [
    ("shoal ru", ["run"]),
    ("shoal run no", ["noop"]),
    ("shoal run noop --conc", ["--concurrency"]),
    ("shoal con", ["config"]),
])  # fmt: skip
def test_bash_completes_commands_and_flags(tmp_path: Path, words: str, offered: list[str]) -> None:
    """`shoal ru<TAB>` in bash: the script `shoal completion bash` prints, sourced, asks shoal itself."""
    script = (f'source <(shoal completion bash); COMP_WORDS=({words}); COMP_CWORD={len(words.split()) - 1}; '
              '_shoal_completion shoal; printf "%s\\n" "${COMPREPLY[@]}"')  # fmt: skip
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=_shoal_env(tmp_path),
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == offered, result.stdout


def test_a_nodes_disk_is_the_free_space_of_the_disk_its_data_dir_is_on():
    """It was the home directory's: a node whose data dir was a 40 MiB disk offered 70 GiB and took jobs
    that could not fit there."""
    import shutil
    import uuid

    from node.config import machine_resources

    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(Path.home()).st_dev:
        pytest.skip("no other file system than the home directory's to put a data dir on")
    data_dir = other / f"shoal-test-{uuid.uuid4().hex}" / "node"  # not made yet: the disk it will be on
    assert abs(machine_resources(data_dir).disk - shutil.disk_usage(other).free) < 64 * 1024**2
    assert not data_dir.parent.exists()


def test_a_node_raises_its_open_files_limit_to_the_hard_limit():
    """A soft limit of 1,024 (systemd's default) ran out under a few hundred event streams."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit leaves nothing to raise")
    code = ("import resource; from node.daemon import raise_open_files_limit; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
            "raise_open_files_limit(); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    expected = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    assert int(done.stdout) == expected
