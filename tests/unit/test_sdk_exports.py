"""``shoal``'s public surface: exactly ``__all__``, SDK classes living in "shoal", cheap to import."""

from __future__ import annotations

import subprocess
import sys

import shoal

SDK_OWN = {
    "AsyncClient",
    "AuthenticationError",
    "CannotShip",
    "Client",
    "ClientKey",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "IndexFailed",
    "InvalidRequest",
    "MapError",
    "NoResults",
    "NotFound",
    "RemoteError",
    "ServerError",
    "ShoalAPIError",
    "ShoalAuth",
    "WaitTimeout",
    "find_api_url",
}
FROM_JOBS = {
    "Deadlines",
    "Deal",
    "DockerEngine",
    "Event",
    "EventKind",
    "Execution",
    "ExecutionState",
    "IndexList",
    "IndexRange",
    "IndexRecord",
    "InputSpec",
    "Job",
    "JobDescription",
    "JobList",
    "JobSpec",
    "JobState",
    "NodeList",
    "NodeStatus",
    "NoopEngine",
    "OutputSpec",
    "PeerList",
    "PythonEngine",
    "Resources",
    "RunResult",
    "Sweep",
    "SweepDescription",
    "SweepList",
    "SweepSpec",
    "WasmEngine",
}


def test_all_lists_each_public_name_once() -> None:
    assert len(shoal.__all__) == len(set(shoal.__all__))
    assert set(shoal.__all__) == SDK_OWN | FROM_JOBS


def test_every_name_in_all_resolves_and_nothing_else_is_public() -> None:
    for name in shoal.__all__:
        assert getattr(shoal, name) is not None
    public = {name for name in vars(shoal) if not name.startswith("_")}
    assert public == set(shoal.__all__)
    assert {name for name in dir(shoal) if not name.startswith("_")} == set(shoal.__all__)


def test_sdk_classes_live_in_shoal_and_reexports_keep_their_home() -> None:
    for name in SDK_OWN:
        assert getattr(shoal, name).__module__ == "shoal", name
    for name in FROM_JOBS:
        assert getattr(shoal, name).__module__.startswith("jobs."), name
    # also when reached through the private module (tracebacks show shoal.NotFound)
    from shoal import _errors

    assert _errors.NotFound.__module__ == "shoal"
    assert repr(shoal.NotFound("x", 404, "not_found")) == "NotFound('x', status=404, code='not_found')"


def test_reexports_are_the_job_model_itself() -> None:
    import jobs
    import jobs.views

    assert shoal.JobSpec is jobs.JobSpec
    assert shoal.JobState is jobs.JobState
    assert shoal.JobDescription is jobs.views.JobDescription


def test_unknown_attribute_raises_attribute_error() -> None:
    try:
        shoal.nope  # noqa: B018
    except AttributeError as e:
        assert "nope" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_import_is_lazy() -> None:
    """``import shoal`` (the CLI's first line) must not pay for httpx, pydantic or cryptography."""
    code = (
        "import sys, shoal\n"
        "heavy = [m for m in ('httpx', 'pydantic', 'cryptography', 'jobs', 'typing') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
        "shoal.Client\n"
        "assert 'httpx' in sys.modules and 'pydantic' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == ""


def test_errors_pickle() -> None:
    import pickle

    error = shoal.InvalidRequest("bad", 422, "invalid_request", ["spec.timeout"])
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.status, copy.fields) == (
        shoal.InvalidRequest,
        "bad",
        422,
        ["spec.timeout"],
    )
