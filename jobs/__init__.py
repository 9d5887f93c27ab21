"""The one job model of Shoal: specs, states, events, wire messages and errors.

Every other package (network, store, API, CLI, SDK) imports job concepts from here and
nowhere else; this package imports nothing else from the project.
"""

from jobs.errors import (
    DuplicateKey,
    InvalidTransition,
    MalformedMessage,
    PeerError,
    PeerTimeout,
    ShoalError,
    StaleState,
    Unreachable,
    Unsendable,
)
from jobs.events import Event, EventKind
from jobs.model import Execution, Identifier, Job, RunResult
from jobs.spec import (
    ENGINES,
    Deadlines,
    Deal,
    DockerEngine,
    EngineSpec,
    InputSpec,
    JobSpec,
    NoopEngine,
    OutputSpec,
    PythonEngine,
    Resources,
    WasmEngine,
    format_bytes,
    parse_bytes,
    parse_duration,
)
from jobs.states import ExecutionSide, ExecutionState, JobState

__all__ = [
    "ENGINES",
    "Deadlines",
    "Deal",
    "DockerEngine",
    "DuplicateKey",
    "EngineSpec",
    "Event",
    "EventKind",
    "Execution",
    "ExecutionSide",
    "ExecutionState",
    "Identifier",
    "InputSpec",
    "InvalidTransition",
    "Job",
    "JobSpec",
    "JobState",
    "MalformedMessage",
    "NoopEngine",
    "OutputSpec",
    "PeerError",
    "PeerTimeout",
    "PythonEngine",
    "Resources",
    "RunResult",
    "ShoalError",
    "StaleState",
    "Unreachable",
    "Unsendable",
    "WasmEngine",
    "format_bytes",
    "parse_bytes",
    "parse_duration",
]
