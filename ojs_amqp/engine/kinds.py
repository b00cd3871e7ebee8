"""The engine's vocabularies as enums: event types, lease kinds, worker directives, outcomes.

Each is a `StrEnum`, so its members are the very strings on the wire (events, metrics
labels, heartbeat answers) and compare equal to them.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    ENQUEUED = "job.enqueued"
    SCHEDULED = "job.scheduled"
    STARTED = "job.started"
    HEARTBEAT = "job.heartbeat"
    COMPLETED = "job.completed"
    FAILED = "job.failed"
    RETRYING = "job.retrying"
    DISCARDED = "job.discarded"
    CANCELLED = "job.cancelled"
    EXPIRED = "job.expired"
    PROGRESS = "progress.updated"
    CRON_TRIGGERED = "cron.triggered"
    CRON_SKIPPED = "cron.skipped"


class LeaseKind(StrEnum):
    """Why a lease ends or moves: its visibility timeout, its execution timeout, a native
    worker that died with it, or (not an expiry) its delivery handed over to a ladder timer."""

    VISIBILITY = "visibility"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    HANDOVER = "handover"


class Directive(StrEnum):
    """What a heartbeat answers a worker, mildest first (a stronger one wins)."""

    RUNNING = "running"
    QUIET = "quiet"
    TERMINATE = "terminate"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Directive.RUNNING: 0, Directive.QUIET: 1, Directive.TERMINATE: 2}


class Outcome(StrEnum):
    """What a move did to a job, as `OutcomeListener`s hear it (and tracing records it)."""

    ENQUEUED = "enqueued"
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    REQUEUED = "requeued"
    LEASE_EXPIRED = "lease_expired"
    CANCELLED = "cancelled"
    DISCARDED = "discarded"
    EXPIRED = "expired"
    TIMER_FIRED = "timer_fired"
