"""The job as the daemon holds it, and its wire form (the OJS JSON envelope)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from functools import lru_cache
from typing import Any

from ojs_amqp.core.progress import to_wire as progress_wire
from ojs_amqp.core.retry import RetryPolicy
from ojs_amqp.core.times import format_ms


class JobState(StrEnum):
    SCHEDULED = "scheduled"
    AVAILABLE = "available"
    PENDING = "pending"
    ACTIVE = "active"
    COMPLETED = "completed"
    RETRYABLE = "retryable"
    CANCELLED = "cancelled"
    DISCARDED = "discarded"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED)


class _Missing:
    """Marks an absent `result` (a handler may legitimately return null)."""

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        # copy/deepcopy/pickle must give back the singleton, or `is MISSING` checks break.
        return "MISSING"


MISSING: Any = _Missing()

#: Keys the daemon owns; a client's values for them are ignored, never echoed.
SYSTEM_FIELDS = frozenset(
    {
        "state", "attempt", "created_at", "enqueued_at", "started_at", "completed_at",
        "cancelled_at", "discarded_at", "activated_at", "error", "errors", "result",
        "next_attempt_at", "retry_delay_ms", "worker_id", "previous_state", "max_attempts",
        "dead_letter", "expired_at", "progress",
    }
)  # fmt: skip

#: Stable order of the known keys on the wire; extra (unknown) keys follow.
_WIRE_ORDER = (
    "specversion", "id", "type", "queue", "args", "meta", "priority", "state", "attempt",
    "max_attempts", "timeout_ms", "visibility_timeout_ms", "retry", "tags", "unique", "schema",
    "created_at", "enqueued_at", "scheduled_at", "expires_at", "activated_at", "started_at",
    "completed_at", "cancelled_at", "discarded_at", "next_attempt_at", "retry_delay_ms",
    "worker_id", "error", "errors", "result", "dead_letter", "progress",
)  # fmt: skip


@dataclass(slots=True)
class Job:
    id: str
    type: str
    queue: str
    args: list[Any]
    state: JobState
    created_at_ms: int
    meta: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    attempt: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_ms: int | None = None
    visibility_timeout_ms: int | None = None
    tags: list[str] | None = None
    unique: dict[str, Any] | None = None
    schema: str | None = None
    enqueued_at_ms: int | None = None
    scheduled_at_ms: int | None = None
    expires_at_ms: int | None = None
    activated_at_ms: int | None = None
    started_at_ms: int | None = None
    completed_at_ms: int | None = None
    cancelled_at_ms: int | None = None
    discarded_at_ms: int | None = None
    next_attempt_at_ms: int | None = None
    retry_delay_ms: int | None = None
    worker_id: str | None = None
    error: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    result: Any = MISSING
    dead_letter: bool = False
    #: The current attempt's progress report (core/progress.py), or None.
    progress: dict[str, Any] | None = None
    #: Bumped on every move that publishes a new broker copy; a delivered copy whose
    #: number differs from the store's is stale and is dropped (DESIGN §3).
    copy: int = 1
    #: Absolute times as the client wrote them (`scheduled_at`, `expires_at`), echoed
    #: verbatim: clients compare what they sent with what they read back.
    client_times: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def max_attempts(self) -> int:
        return self.retry.max_attempts


_FIELDS = tuple(f.name for f in fields(Job))


def evolve(job: Job, **changes: Any) -> Job:
    """A copy of `job` with `changes`: dataclasses.replace without its per-call field
    introspection (4 µs against 2, twice per job on every fetch and ack)."""
    new = object.__new__(Job)
    for name in _FIELDS:
        setattr(new, name, getattr(job, name))
    for name, value in changes.items():
        setattr(new, name, value)  # an unknown name raises AttributeError (slots)
    return new


_TIMES = (
    "created_at", "enqueued_at", "scheduled_at", "expires_at", "activated_at", "started_at",
    "completed_at", "cancelled_at", "discarded_at", "next_attempt_at",
)  # fmt: skip
_PLAIN = (
    "id", "type", "queue", "args", "meta", "priority", "attempt", "timeout_ms",
    "visibility_timeout_ms", "tags", "unique", "schema", "retry_delay_ms", "worker_id", "error",
    "errors",
)  # fmt: skip


_TIME_FIELDS = tuple((name, name + "_ms") for name in _TIMES)
_WIRE_HEAD = ("id", "type", "queue", "args", "meta", "priority")
_WIRE_TIMEOUTS = ("timeout_ms", "visibility_timeout_ms")
_WIRE_OPTIONS = ("tags", "unique", "schema")
_WIRE_OUTCOME = ("retry_delay_ms", "worker_id", "error", "errors")


@lru_cache(maxsize=1024)
def _retry_wire(policy: RetryPolicy) -> dict[str, Any]:
    return policy.to_wire()  # policies are frozen, and a handful are shared by every job


def _put_present(out: dict[str, Any], job: Job, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(job, name)
        if value is not None:
            out[name] = value


def to_wire(job: Job) -> dict[str, Any]:
    """The OJS envelope: absent values are omitted, unknown client fields round-trip.

    Keys are written in _WIRE_ORDER as it goes (this runs for every job on every response
    and every broker copy)."""
    out: dict[str, Any] = {"specversion": "1.0"}
    _put_present(out, job, _WIRE_HEAD)
    out["state"] = job.state.value
    out["attempt"] = job.attempt
    out["max_attempts"] = job.retry.max_attempts
    _put_present(out, job, _WIRE_TIMEOUTS)
    out["retry"] = dict(_retry_wire(job.retry))
    _put_present(out, job, _WIRE_OPTIONS)
    client_times = job.client_times
    for name, attr in _TIME_FIELDS:
        value = getattr(job, attr)
        if value is not None:
            out[name] = (client_times.get(name) if client_times else None) or format_ms(value)
    _put_present(out, job, _WIRE_OUTCOME)
    if job.result is not MISSING:
        out["result"] = job.result
    if job.dead_letter:
        out["dead_letter"] = True
    if job.progress is not None:
        out["progress"] = progress_wire(job.progress)
    for key, value in job.extra.items():
        if key not in out:
            out[key] = value
    return out


_RETRY_FIELDS = tuple(f.name for f in fields(RetryPolicy))


@lru_cache(maxsize=1024)
def _retry_record(policy: RetryPolicy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in _RETRY_FIELDS}


def to_record(job: Job) -> dict[str, Any]:
    """Lossless storage form (raw milliseconds, policy fields, copy number)."""
    record: dict[str, Any] = {name: getattr(job, name) for name in _PLAIN}
    for _, attr in _TIME_FIELDS:
        record[attr] = getattr(job, attr)
    record["state"] = job.state.value
    record["retry"] = dict(_retry_record(job.retry))
    record["copy"] = job.copy
    record["dead_letter"] = job.dead_letter
    record["extra"] = job.extra
    if job.client_times:
        record["client_times"] = job.client_times
    if job.result is not MISSING:
        record["result"] = job.result
    if job.progress is not None:
        record["progress"] = job.progress
    return record


_STATES = {state.value: state for state in JobState}


def from_record(record: dict[str, Any]) -> Job:
    """The Job a record stores; built field by field rather than through __init__'s keyword
    handling (half the cost: it runs on every store read)."""
    retry = record["retry"]
    if "non_retryable_errors" in retry:
        retry = {**retry, "non_retryable_errors": tuple(retry["non_retryable_errors"])}
    job = object.__new__(Job)
    get = record.get
    for name in _PLAIN:
        setattr(job, name, get(name))
    for _, attr in _TIME_FIELDS:
        setattr(job, attr, get(attr))
    job.state = _STATES[record["state"]]
    job.retry = RetryPolicy(**retry)
    job.copy = get("copy", 1)
    job.dead_letter = bool(get("dead_letter"))
    job.extra = get("extra") or {}
    job.client_times = get("client_times") or {}
    job.result = get("result", MISSING)
    job.progress = get("progress")
    return job
