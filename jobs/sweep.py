"""Sweeps: one request that stands for many jobs — a parameter grid, a zip, a list, input shards.

Index ``i`` of a sweep is an ordinary ``JobSpec`` (``SweepSpec.job_for(i)``): the template with
the index's values as environment variables (and, in a python or wasm job's args, in place of ``$KEY``),
``SHOAL_INDEX`` and ``SHOAL_COUNT``, and its shard of the sharded input. The parts combine as a grid:
``count`` is the product of their sizes and the last part varies fastest, like ``itertools.product``.

Indexes are never announced one by one: compute nodes claim ranges of them (see
``jobs.messages.Claim``), so a 10,000-index sweep costs messages in proportion to nodes and time.
"""

from __future__ import annotations

import hashlib
import math
import string
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.model import Identifier, RunResult, moved
from jobs.spec import _ENV_KEY, MAX_ENV, InputSpec, JobSpec, Shard, _Frozen
from jobs.states import JobState

MAX_INDEXES = 1_000_000
MAX_CONFIDENCE = 5  # an index verified by k nodes runs on up to 2k - 1 of them
RESERVED_ENV = ("SHOAL_INDEX", "SHOAL_COUNT")
# engines whose args reach the program as they are, with an index's $KEY replaced by its value (a docker job's
# args often go to a shell, whose own $variables must stay)
ARGS_TAKE_VALUES = ("python", "wasm")
MAX_ARGS_CHARS = 256 * 1024  # of an index's args with its values in
# characters of one index's parameters (each at its longest value): every listing of indexes carries them, and
# 60,000 one-value axes in a 1 MiB request made each listed index take 0.45 s of the node's event loop
MAX_PARAM_CHARS = 64 * 1024  # (a prompt of a few pages per index fits)


def as_text(value: Any) -> Any:
    """A number or a boolean as an environment variable reads it (``3`` → ``"3"``, ``True`` → ``"true"``,
    as YAML's ``true`` reads); anything else as it is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


class SweepSpec(_Frozen):
    job: JobSpec = Field(description="the template every index runs, with its own values added")
    grid: dict[str, list[str]] = Field({}, description="every combination of these values")
    zip: dict[str, list[str]] = Field({}, description="the i-th value of each list together (equal lengths)")
    items: list[dict[str, str]] = Field([], max_length=100_000, description="an explicit list of value sets")
    shard_inputs: int = Field(0, ge=0, le=100_000, description="split the directory input into N shards")
    shard_path: str | None = Field(None, description="the path of the input to shard (default: the only "
                                                     "input that is not /context)")
    success: Literal["all", "any"] = Field("all", description="all: every index must succeed; any: the first "
                                                              "success completes the sweep and cancels the rest")
    success_output: str | None = Field(None, description="with success=any: an index succeeds only when it "
                                                         "exits 0 and this declared output is not empty")
    confidence: int = Field(0, ge=0, le=MAX_CONFIDENCE, exclude_if=lambda v: not v, description=(
        "distinct nodes whose results for an index must agree before it counts (0 or 1: one node's word); "
        "each index then runs on that many nodes or more"))
    max_failures: int | None = Field(None, ge=0, le=MAX_INDEXES, exclude_if=lambda v: v is None, description=(
        "stop the sweep, cancelling what has not run, once more than this many indexes failed (0: at the first)"))

    @field_validator("grid", "zip", mode="before")
    @classmethod
    def _numbers_as_text(cls, v: Any) -> Any:
        """``{"x": [1, 2.5, true]}`` as the job's environment reads it: ``["1", "2.5", "true"]``."""
        if isinstance(v, dict):
            return {key: [as_text(x) for x in values] if isinstance(values, list) else values
                    for key, values in v.items()}
        return v

    @field_validator("items", mode="before")
    @classmethod
    def _item_numbers_as_text(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{key: as_text(x) for key, x in item.items()} if isinstance(item, dict) else item for item in v]
        return v

    @field_validator("grid", "zip")
    @classmethod
    def _axes(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"{key}: give at least one value")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        problems = []
        names = [*self.grid, *self.zip, *(k for item in self.items[:1] for k in item)]
        bad = sorted({k for k in names if not _ENV_KEY.match(k)})
        if bad:
            problems.append(f"invalid parameter names (they become environment variables): {', '.join(bad)}")
        nul = sorted({k for part in (self.grid, self.zip) for k, vs in part.items() if any("\0" in v for v in vs)}
                     | {k for item in self.items for k, v in item.items() if "\0" in v})
        if nul:
            problems.append(f"a NUL character in a value of: {', '.join(nul)} (an environment cannot hold one)")
        reserved = sorted(set(names) & set(RESERVED_ENV))
        if reserved:
            problems.append(f"{', '.join(reserved)} is set by Shoal for every index")
        if len(set(names)) != len(names):
            problems.append("a parameter is given twice")
        env = {*self.job.env, *names, *RESERVED_ENV, *(["SHOAL_SHARD"] if self.shard_inputs else [])}
        if len(env) > MAX_ENV:
            problems.append(f"{len(names)} parameters: with the template's env and {', '.join(RESERVED_ENV)}, an "
                            f"index's environment would hold {len(env):,} variables; at most {MAX_ENV}")
        if len({len(v) for v in self.zip.values()}) > 1:
            problems.append("zip: every list must have the same length")
        if self.items and len({frozenset(i) for i in self.items}) > 1:
            problems.append("items: every item must set the same parameters")
        if self.job.secret_env:  # claims carry no secrets (yet): announced, they would reach every node
            problems.append("secret_env is not supported in sweeps yet")
        if self.job.deal.concurrency != 1 or self.job.deal.min_bids != 0:
            problems.append("a sweep runs each index once: leave concurrency and min_bids unset")
        if self.job.deal.confidence != 0:
            problems.append("a sweep verifies each index with its own confidence, not its job's")
        if self.shard_inputs and self._sharded_input() is None:
            problems.append("shard_inputs: name the input to shard with shard_path (its mount path)"
                            if self.shard_path is None else f"shard_path: no input is mounted at {self.shard_path}")
        if self.success_output is not None:
            if self.success != "any":
                problems.append("success_output only applies with success=any")
            elif self.success_output not in {o.name for o in self.job.outputs}:
                problems.append(f"success_output: {self.success_output!r} is not one of the job's outputs")
        sizes = self.sizes()
        if not sizes:
            problems.append("a sweep needs parameters (grid, zip or items) or shard_inputs")
        elif math.prod(sizes) > MAX_INDEXES:
            problems.append(f"{math.prod(sizes)} indexes: a sweep has at most {MAX_INDEXES}")
        elif (chars := self._param_chars()) > MAX_PARAM_CHARS:
            problems.append(f"an index's parameters could take {chars:,} characters (names and longest values); "
                            f"at most {MAX_PARAM_CHARS:,}: put large values in a file the job reads")
        elif (longest := self._longest_args()) > MAX_ARGS_CHARS:
            problems.append(f"args: with the values in place of their $KEYs, an index's args could take {longest:,} "
                            f"characters; at most {MAX_ARGS_CHARS:,}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _longest_values(self) -> dict[str, int]:
        """Each parameter's name and the length of its longest value."""
        longest = {key: max(map(len, values), default=0) for part in (self.grid, self.zip)
                   for key, values in part.items()}
        for item in self.items:
            for key, value in item.items():
                longest[key] = max(longest.get(key, 0), len(value))
        return longest

    def _param_chars(self) -> int:
        """The most characters an index's parameters take: each name and its longest value."""
        return sum(len(key) + n for key, n in self._longest_values().items())

    def _longest_args(self) -> int:
        """The most characters an index's args take once ``job_for`` put its values in (each ``$KEY`` taking the
        longest value of KEY; 0 where none is put in): 100,000 "$x" and a 100 kB value would make every index's
        spec 10 GB, on every node that runs one."""
        engine = self.job.engine
        if engine.name not in ARGS_TAKE_VALUES or not any("$" in arg for arg in engine.args):
            return 0  # as written: the template's own size is bounded where it comes in
        longest = {key: len(value) for key, value in self.job.env.items()} | self._longest_values()
        longest |= dict.fromkeys(RESERVED_ENV, len(str(self.count)))
        total = 0
        for arg in engine.args:
            total += len(arg)
            for match in string.Template.pattern.finditer(arg):
                if (name := match["named"] or match["braced"]) in longest:
                    total += longest[name] - len(match[0])
        return total

    def _sharded_input(self) -> int | None:
        """Position of the input to shard in the template's inputs."""
        if self.shard_path is not None:
            return next((i for i, x in enumerate(self.job.inputs) if x.path == self.shard_path), None)
        candidates = [i for i, x in enumerate(self.job.inputs) if x.path != "/context"]
        return candidates[0] if len(candidates) == 1 else None

    def sizes(self) -> list[int]:
        """Size of each part, in the order indexes are decomposed (the last varies fastest)."""
        sizes = [len(v) for v in self.grid.values()]
        if self.zip:
            sizes.append(len(next(iter(self.zip.values()))))
        if self.items:
            sizes.append(len(self.items))
        if self.shard_inputs:
            sizes.append(self.shard_inputs)
        return sizes

    @property
    def count(self) -> int:
        return math.prod(self.sizes())

    def values(self, index: int) -> dict[str, str]:
        """The parameters of one index, as its environment sees them (without SHOAL_*)."""
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} is outside 0-{self.count - 1}")
        digits = []
        rest = index
        for size in reversed(self.sizes()):
            rest, digit = divmod(rest, size)
            digits.append(digit)
        digits.reverse()
        out: dict[str, str] = {}
        position = iter(digits)
        for key, values in self.grid.items():
            out[key] = values[next(position)]
        if self.zip:
            i = next(position)
            out.update({key: values[i] for key, values in self.zip.items()})
        if self.items:
            out.update(self.items[next(position)])
        if self.shard_inputs:
            out["SHOAL_SHARD"] = str(next(position))
        return out

    def job_for(self, index: int) -> JobSpec:
        """The job index ``index`` runs."""
        values = self.values(index)
        env = {**self.job.env, **values, "SHOAL_INDEX": str(index), "SHOAL_COUNT": str(self.count)}
        update: dict[str, object] = {"env": env}
        engine = self.job.engine
        if engine.name in ARGS_TAKE_VALUES and any("$" in arg for arg in engine.args):
            # "--seed $seed", as a shell would give it (no shell runs these); $$ is a $, any other $NAME stays
            args = [string.Template(arg).safe_substitute(env) for arg in engine.args]
            update["engine"] = engine.model_copy(update={"args": args})
        if self.shard_inputs:
            shard = Shard(index=int(values["SHOAL_SHARD"]), count=self.shard_inputs)
            position = self._sharded_input()
            inputs = list(self.job.inputs)
            inputs[position] = InputSpec(source=inputs[position].source, path=inputs[position].path, shard=shard)
            update["inputs"] = inputs
        return self.job.model_copy(update=update)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def is_hit(self, result: RunResult) -> bool:
        """Whether a finished index counts as a success."""
        if result.exit_code != 0:
            return False
        return self.success_output is None or result.output_sizes.get(self.success_output, 0) > 0


class Sweep(BaseModel):
    """A sweep's record: its spec, overall state and how many indexes are in each state."""

    model_config = ConfigDict(frozen=True)

    id: Identifier
    owner: Identifier
    spec: SweepSpec
    count: int
    state: JobState = JobState.PENDING
    reason: str = ""
    requester: Identifier | Literal[""] = ""
    counts: dict[JobState, int] = {}  # index state -> how many
    winner: int | None = None  # success=any: the index that succeeded first
    created_at: float
    updated_at: float
    revision: int = 0

    def transition(self, state: JobState, reason: str, now: float, **changes: object) -> Sweep:
        from jobs.states import check_sweep_transition

        check_sweep_transition(self.state, state)
        return moved(self, state, reason, now, changes)


class IndexRecord(BaseModel):
    """One index of a sweep: where it ran and how it ended."""

    model_config = ConfigDict(frozen=True)

    index: int
    state: JobState = JobState.PENDING
    node_id: Identifier | None = None
    reason: str = ""
    attempts: int = 0
    retries: int = 0  # runs after a failure, as the job template's ``retries`` allows
    result: RunResult | None = None
    updated_at: float = 0.0
    params: dict[str, str] = Field({}, description="the index's parameters, as its environment has them "
                                   "(filled in by the API)")


class IndexRange(BaseModel):
    """Consecutive indexes in one state: ``first``-``last`` inclusive."""

    first: int
    last: int
    state: JobState
    reason: str = ""  # of the first index of the range (failed ranges say why)

    def __str__(self) -> str:
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{span} {self.state.value}" + (f": {self.reason}" if self.reason else "")


def index_ranges(states: Iterable[tuple[int, JobState, str]], limit: int | None = None) -> list[IndexRange]:
    """(index, state, reason) in index order → ranges of consecutive indexes with the same state; with
    ``limit``, no more than ``limit + 1`` of them (enough to say there were more).

    A failed range keeps the reason of its first index; failures with other reasons are
    usually the same story on another node, and listing each would bring back 10,000 rows.
    """
    runs: list[list] = []  # [first, last, state, reason]: a model is made once per range, not once per index
    for index, state, reason in states:
        if runs and runs[-1][2] is state and runs[-1][1] == index - 1:
            runs[-1][1] = index
        elif limit is not None and len(runs) > limit:
            break
        else:
            runs.append([index, index, state, reason if state in (JobState.FAILED, JobState.CANCELLED) else ""])
    return [IndexRange(first=first, last=last, state=state, reason=reason) for first, last, state, reason in runs]


def compress(indexes: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted indexes → half-open ``(start, end)`` runs: what claims carry on the wire."""
    runs: list[tuple[int, int]] = []
    for i in indexes:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
