"""The config file, ``$SHOAL_HOME/config.toml`` (``~/.shoal/config.toml``; ``$SHOAL_CONFIG`` names another)::

    api = "https://node.example.org:8700"   # the node to talk to, like --api
    ca_cert = "node.pem"                    # like --ca-cert (relative to this file's folder)
    output = "table"                        # read commands' default format: table, json or yaml

    [run]                                   # defaults for the flags of every run command
    cpu = 2
    memory = "1GiB"
    timeout = 600
    concurrency = 3
    wait = true

Every setting is taken from the first of: a flag, an environment variable (``SHOAL_API``,
``SHOAL_CA_CERT``, ``SHOAL_OUTPUT``), this file, the built-in default. The file is read by the
commands that need a setting, each time (it is small); a bad file is one ``Error:`` line naming
the file, the key and the problem (exit 2), never a half-applied config. ``parse_config`` is the
pure part that unit tests drive.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.errors import CLIError
from cli.exits import EXIT_USAGE

ENV_CONFIG = "SHOAL_CONFIG"
ENV_OUTPUT = "SHOAL_OUTPUT"
OUTPUT_FORMATS = ("table", "json", "yaml")
DEFAULT_OUTPUT = "table"


class ConfigError(CLIError):
    """A bad config file or setting, named with its file (or variable) and key: one ``Error:`` line, exit 2."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem, code=EXIT_USAGE)


# Each key's converter: takes the TOML value, returns the setting's value, or raises ValueError
# saying what was expected. They give what the matching flag gives (cpu "0.5", timeout 600.0, ...).


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def check_url(value: Any) -> str:
    """As ``--api`` takes it: an http(s) URL, or HOST:PORT (http:// is meant), that the SDK can parse."""
    from urllib.parse import urlsplit

    url = value if isinstance(value, str) and "://" in value else f"http://{value}"
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != -1
    except ValueError:  # .port of "host:x", or an IPv6 address such as "http://[::1"
        valid = False
    if not isinstance(value, str) or not value.strip() or not value.isprintable() or not valid:
        raise ValueError("expected an http:// or https:// URL (or HOST:PORT)")
    return value


def _output(value: Any) -> str:
    if value not in OUTPUT_FORMATS:
        raise ValueError(f"expected one of {', '.join(OUTPUT_FORMATS)}")
    return value


def _resource(dim: str, expected: str) -> Callable[[Any], str]:
    """cpu, memory, disk: a number or a string with a unit, checked here as the job spec checks the flag,
    so that a bad value is blamed on this file rather than on a flag never given."""

    def check(value: Any) -> str:
        from pydantic import ValidationError

        from jobs import JobSpec

        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(expected)
        text = f"{value:g}" if isinstance(value, float) else str(value)
        try:
            JobSpec.model_validate({"engine": {"name": "noop"}, "resources": {dim: text}})
        except ValidationError:
            raise ValueError(expected) from None
        return text

    return check


def _seconds(value: Any) -> float:
    from jobs.spec import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ValueError('expected a number of seconds > 0, or a string such as "10m" or "1h30m"')
    return seconds


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a whole number >= 0")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


TOP_KEYS: dict[str, Callable[[Any], Any]] = {"api": check_url, "ca_cert": _text, "output": _output}
# The keys of [run] are the parameter names of the run commands' shared flags (cli.options).
RUN_KEYS: dict[str, Callable[[Any], Any]] = {
    "cpu": _resource("cpu", 'expected a number or a string such as "500m" (cores: more than 0, at most 1024)'),
    "memory": _resource("memory", 'expected a number or a string such as "512MiB" (bytes: more than 0)'),
    "disk": _resource("disk", 'expected a number or a string such as "1GiB" (bytes)'),
    "timeout": _seconds,
    "concurrency": _count, "confidence": _count, "min_bids": _count, "retries": _count,
    "queue_timeout": _seconds, "gpu": _count,
    "wait": _boolean, "wait_timeout": _seconds, "cache": _boolean,
}  # fmt: skip


@dataclass(frozen=True)
class Config:
    """A parsed config file: ``values`` by key (``api``, ``output``, ``run.cpu``, ...), only those set."""

    path: Path
    values: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def run_defaults(self) -> dict[str, Any]:
        """The ``[run]`` table: flag parameter name → value."""
        return {key.removeprefix("run."): v for key, v in self.values.items() if key.startswith("run.")}


def parse_config(text: str, path: Path) -> Config:
    """Parse and check a config file's text; every problem names ``path`` and the key."""
    import tomllib

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key == "run":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: run: expected a table ([run])")
            values.update(_checked(path, value, RUN_KEYS, "run."))
        else:
            values.update(_checked(path, {key: value}, TOP_KEYS, ""))
    if "ca_cert" in values:
        values["ca_cert"] = path.parent / Path(values["ca_cert"]).expanduser()
    return Config(path, values)


def _checked(path: Path, table: Mapping[str, Any], known: Mapping[str, Callable[[Any], Any]],
             prefix: str) -> dict[str, Any]:  # fmt: skip
    where = f"[{prefix.rstrip('.')}] " if prefix else ""
    checked = {}
    for key, value in table.items():
        if key not in known:
            names = ", ".join(known) + ("" if prefix else ", [run]")
            raise ConfigError(f"{path}: {where}{key}: unknown key (known here: {names})")
        try:
            checked[prefix + key] = known[key](value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {where}{key}: {exc}, got {value!r}") from None
    return checked


def config_path() -> Path:
    """``$SHOAL_CONFIG``, else ``config.toml`` in ``$SHOAL_HOME`` (``~/.shoal``)."""
    named = os.environ.get(ENV_CONFIG)
    if named:
        return Path(named).expanduser()
    return Path(os.environ.get("SHOAL_HOME") or Path.home() / ".shoal") / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """The config file, parsed; no file at the default path is an empty config.

    A file that ``$SHOAL_CONFIG`` names must exist: a typo there should not pass silently
    (``SHOAL_CONFIG=/dev/null`` means no config).
    """
    path = path or config_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if os.environ.get(ENV_CONFIG):
            raise ConfigError(f"{path}: no such file (named by ${ENV_CONFIG})") from None
        return Config(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_config(text, path)


def output_format(env: Mapping[str, str] | None = None, config: Config | None = None) -> str:
    """The read commands' default output format (``--output`` wins over it): table, json or yaml.

    ``$SHOAL_OUTPUT``, else the config file's ``output``, else table.
    """
    return resolve("output", env=env, config=config).value


@dataclass(frozen=True)
class Setting:
    """One effective setting and where it came from: ``flag --api``, ``$SHOAL_API``, the file, ``default``."""

    key: str
    value: Any
    source: str


# key → (environment variable, built-in default). The root flags' own values come in ``given``.
_ENV_AND_DEFAULT: dict[str, tuple[str | None, Any]] = {
    "api": ("SHOAL_API", None),  # None: the running devstack's first node
    "ca_cert": ("SHOAL_CA_CERT", None),  # None: the system's trust store
    "output": (ENV_OUTPUT, DEFAULT_OUTPUT),
}


def resolve(key: str, *, given: Mapping[str, Setting] | None = None, env: Mapping[str, str] | None = None,
            config: Config | None = None) -> Setting:  # fmt: skip
    """The effective value of ``key``: ``given`` (a flag, or an environment variable typer read for
    it) > the environment > the config file > the built-in default."""
    if given and key in given:
        return given[key]
    env = os.environ if env is None else env
    variable, default = _ENV_AND_DEFAULT.get(key, (None, None))
    if variable and env.get(variable):
        value = env[variable]
        if key == "output":
            try:
                value = _output(value)
            except ValueError as exc:
                raise ConfigError(f"${variable}: {exc}, got {value!r}") from None
        return Setting(key, value, f"${variable}")
    config = load_config() if config is None else config
    if key in config.values:
        return Setting(key, config.values[key], str(config.path))
    return Setting(key, default, "default")


def effective(builtin: Mapping[str, Any], given: Mapping[str, Setting] | None = None,
              env: Mapping[str, str] | None = None, config: Config | None = None) -> list[Setting]:  # fmt: skip
    """Every setting (``shoal config show``): the top-level ones, then ``run.*``; those not in the file
    are the run flags' ``builtin`` defaults (``cli.options.flag_defaults``; None: the job spec's own)."""
    config = load_config() if config is None else config
    settings = [resolve(key, given=given, env=env, config=config) for key in TOP_KEYS]
    for key in RUN_KEYS:
        name = f"run.{key}"
        in_file = name in config.values
        settings.append(Setting(name, config.get(name) if in_file else builtin.get(key),
                                str(config.path) if in_file else "default"))
    return settings
