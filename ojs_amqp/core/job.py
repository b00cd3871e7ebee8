"""The job as the daemon holds it, and its wire form (the OJS JSON envelope)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

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
        "dead_letter", "expired_at",
    }
)  # fmt: skip

#: Stable order of the known keys on the wire; extra (unknown) keys follow.
_WIRE_ORDER = (
    "specversion", "id", "type", "queue", "args", "meta", "priority", "state", "attempt",
    "max_attempts", "timeout_ms", "visibility_timeout_ms", "retry", "tags", "unique", "schema",
    "created_at", "enqueued_at", "scheduled_at", "expires_at", "activated_at", "started_at",
    "completed_at", "cancelled_at", "discarded_at", "next_attempt_at", "retry_delay_ms",
    "worker_id", "error", "errors", "result", "dead_letter",
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


_TIMES = (
    "created_at", "enqueued_at", "scheduled_at", "expires_at", "activated_at", "started_at",
    "completed_at", "cancelled_at", "discarded_at", "next_attempt_at",
)  # fmt: skip
_PLAIN = (
    "id", "type", "queue", "args", "meta", "priority", "attempt", "timeout_ms",
    "visibility_timeout_ms", "tags", "unique", "schema", "retry_delay_ms", "worker_id", "error",
    "errors",
)  # fmt: skip


def to_wire(job: Job) -> dict[str, Any]:
    """The OJS envelope: absent values are omitted, unknown client fields round-trip."""
    out: dict[str, Any] = {"specversion": "1.0", "state": job.state.value}
    for name in _PLAIN:
        value = getattr(job, name)
        if value is not None:
            out[name] = value
    for name in _TIMES:
        value = getattr(job, name + "_ms")
        if value is not None:
            out[name] = job.client_times.get(name) or format_ms(value)
    out["max_attempts"] = job.retry.max_attempts
    out["retry"] = job.retry.to_wire()
    if job.error is None:
        out.pop("error", None)
    if job.result is not MISSING:
        out["result"] = job.result
    if job.dead_letter:
        out["dead_letter"] = True
    ordered = {k: out[k] for k in _WIRE_ORDER if k in out}
    for key, value in job.extra.items():
        ordered.setdefault(key, value)
    return ordered


_RETRY_FIELDS = tuple(f.name for f in fields(RetryPolicy))


def to_record(job: Job) -> dict[str, Any]:
    """Lossless storage form (raw milliseconds, policy fields, copy number)."""
    record: dict[str, Any] = {name: getattr(job, name) for name in _PLAIN}
    for name in _TIMES:
        record[name + "_ms"] = getattr(job, name + "_ms")
    record["state"] = job.state.value
    record["retry"] = {name: getattr(job.retry, name) for name in _RETRY_FIELDS}
    record["copy"] = job.copy
    record["dead_letter"] = job.dead_letter
    record["extra"] = job.extra
    if job.client_times:
        record["client_times"] = job.client_times
    if job.result is not MISSING:
        record["result"] = job.result
    return record


def from_record(record: dict[str, Any]) -> Job:
    retry = dict(record["retry"])
    retry["non_retryable_errors"] = tuple(retry.get("non_retryable_errors", ()))
    kwargs: dict[str, Any] = {name: record.get(name) for name in _PLAIN}
    for name in _TIMES:
        kwargs[name + "_ms"] = record.get(name + "_ms")
    return Job(
        **kwargs,
        state=JobState(record["state"]),
        retry=RetryPolicy(**retry),
        copy=record.get("copy", 1),
        dead_letter=bool(record.get("dead_letter")),
        extra=record.get("extra") or {},
        client_times=record.get("client_times") or {},
        result=record.get("result", MISSING),
    )
