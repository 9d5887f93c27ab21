"""Shoal's Python SDK: submit jobs to a Shoal node, follow them and fetch their results.

    import shoal

    with shoal.Client() as client:                    # signs with ~/.shoal/client.key
        job = client.run({"engine": {"name": "python", "code": "print(42)"}}, timeout=60)
        print(job.job.state, client.logs(job.job.id))
        sweep = client.run_sweep({"job": {"engine": {"name": "noop"}}, "grid": {"x": ["1", "2"]}})
        print(sweep.sweep.counts, client.index_logs(sweep.sweep.id, 1))
        print(client.map(lambda x: x * x, range(10)))  # a function over items, remotely

``import shoal`` is nearly free: the SDK (httpx, pydantic, the job model, cryptography) is
imported on first use of any name below, so the CLI starts fast. Job model classes are
re-exported from ``jobs`` unchanged; the SDK's own classes report ``__module__ == "shoal"``.
"""

# Not ``from typing import TYPE_CHECKING``: importing typing would cost more than the rest of
# ``import shoal``. Type checkers (mypy, pyright) honour a module-level flag of that name; it is
# deleted below so that the module's public names are exactly ``__all__``.
TYPE_CHECKING = False

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "CannotShip",
    "Client",
    "ClientKey",
    "Conflict",
    "ConnectionFailed",
    "Deadlines",
    "Deal",
    "DockerEngine",
    "Event",
    "EventKind",
    "Execution",
    "ExecutionState",
    "Forbidden",
    "IndexFailed",
    "IndexList",
    "IndexRange",
    "IndexRecord",
    "InputSpec",
    "InvalidRequest",
    "Job",
    "JobDescription",
    "JobList",
    "JobSpec",
    "JobState",
    "MapError",
    "NoResults",
    "NodeList",
    "NodeStatus",
    "NoopEngine",
    "NotFound",
    "OutputSpec",
    "PeerList",
    "PythonEngine",
    "RemoteError",
    "Resources",
    "RunResult",
    "ServerError",
    "ShoalAPIError",
    "ShoalAuth",
    "Sweep",
    "SweepDescription",
    "SweepList",
    "SweepSpec",
    "WaitTimeout",
    "WasmEngine",
    "find_api_url",
]

# Where each public name is defined. Names from ``shoal.*`` are the SDK's own.
_ORIGINS: dict[str, str] = {
    "AsyncClient": "shoal._client",
    "Client": "shoal._client",
    "find_api_url": "shoal._client",
    "ClientKey": "shoal._auth",
    "ShoalAuth": "shoal._auth",
    "ShoalAPIError": "shoal._errors",
    "AuthenticationError": "shoal._errors",
    "Forbidden": "shoal._errors",
    "NotFound": "shoal._errors",
    "Conflict": "shoal._errors",
    "NoResults": "shoal._errors",
    "InvalidRequest": "shoal._errors",
    "ServerError": "shoal._errors",
    "WaitTimeout": "shoal._errors",
    "ConnectionFailed": "shoal._errors",
    "CannotShip": "shoal._errors",
    "MapError": "shoal._errors",
    "RemoteError": "shoal._errors",
    "IndexFailed": "shoal._errors",
    "JobSpec": "jobs.spec",
    "Resources": "jobs.spec",
    "Deal": "jobs.spec",
    "Deadlines": "jobs.spec",
    "InputSpec": "jobs.spec",
    "OutputSpec": "jobs.spec",
    "NoopEngine": "jobs.spec",
    "DockerEngine": "jobs.spec",
    "WasmEngine": "jobs.spec",
    "PythonEngine": "jobs.spec",
    "JobState": "jobs.states",
    "ExecutionState": "jobs.states",
    "Job": "jobs.model",
    "Execution": "jobs.model",
    "RunResult": "jobs.model",
    "Event": "jobs.events",
    "EventKind": "jobs.events",
    "JobDescription": "jobs.views",
    "JobList": "jobs.views",
    "NodeStatus": "jobs.views",
    "NodeList": "jobs.views",
    "PeerList": "jobs.views",
    "SweepSpec": "jobs.sweep",
    "Sweep": "jobs.sweep",
    "IndexRecord": "jobs.sweep",
    "IndexRange": "jobs.sweep",
    "SweepDescription": "jobs.views",
    "SweepList": "jobs.views",
    "IndexList": "jobs.views",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ provides these
    from jobs.events import Event, EventKind
    from jobs.model import Execution, Job, RunResult
    from jobs.spec import (
        Deadlines,
        Deal,
        DockerEngine,
        InputSpec,
        JobSpec,
        NoopEngine,
        OutputSpec,
        PythonEngine,
        Resources,
        WasmEngine,
    )
    from jobs.states import ExecutionState, JobState
    from jobs.sweep import IndexRange, IndexRecord, Sweep, SweepSpec
    from jobs.views import (
        IndexList,
        JobDescription,
        JobList,
        NodeList,
        NodeStatus,
        PeerList,
        SweepDescription,
        SweepList,
    )
    from shoal._auth import ClientKey, ShoalAuth
    from shoal._client import AsyncClient, Client, find_api_url
    from shoal._errors import (
        AuthenticationError,
        CannotShip,
        Conflict,
        ConnectionFailed,
        Forbidden,
        IndexFailed,
        InvalidRequest,
        MapError,
        NoResults,
        NotFound,
        RemoteError,
        ServerError,
        ShoalAPIError,
        WaitTimeout,
    )
del TYPE_CHECKING


def _load() -> None:
    """Import the whole SDK at once and publish its names here.

    All at once, so ``__module__`` is already "shoal" on every SDK class by the time any of
    them is used (an error raised by ``Client`` prints as ``shoal.NotFound``).
    """
    import importlib

    found = {name: getattr(importlib.import_module(module), name) for name, module in _ORIGINS.items()}
    for name, obj in found.items():
        if _ORIGINS[name].startswith("shoal."):
            obj.__module__ = "shoal"
    globals().update(found)


def __getattr__(name: str) -> object:
    if name in _ORIGINS:
        _load()
        return globals()[name]
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
