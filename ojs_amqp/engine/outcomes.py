"""One fan-out per outcome: what follows a move that changed a job's state.

Every part that moves a job calls one method here once the move is recorded; the method
updates the metrics, the events log, tracing and each registered `OutcomeListener`, always
in that order. A feature that must react to every terminal move (unique keys, workflows)
registers a listener instead of editing each site. Nothing here allocates per job beyond
what the events log keeps; listeners are only walked when there are some.

Listener policy: a listener that raises is logged and counted (`listener_failures`); the move
it heard about stands, and the other listeners still hear it.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.engine.events import EventLog
from ojs_amqp.engine.kinds import EventType, LeaseKind, Outcome
from ojs_amqp.metrics import Metrics
from ojs_amqp.tracing import EnqueueSpan, JobTracing

log = logging.getLogger("ojs_amqp.engine")


class OutcomeListener(Protocol):
    def job_moved(self, outcome: Outcome, before: Job | None, after: Job) -> None:
        """`after` is the job as recorded; `before` as it was (None for a new job). Called
        synchronously, after the move is recorded: a listener that needs I/O spawns it."""


class Outcomes:
    def __init__(self, metrics: Metrics, events: EventLog, tracing: JobTracing | None) -> None:
        self.metrics = metrics
        self.events = events
        #: OpenTelemetry spans; None when opentelemetry is absent or disabled, so each
        #: outcome costs one attribute check for it.
        self.tracing = tracing
        self._listeners: list[OutcomeListener] = []
        self.listener_failures = 0

    def listen(self, listener: OutcomeListener) -> None:
        self._listeners.append(listener)

    def _tell(self, outcome: Outcome, before: Job | None, after: Job) -> None:
        for listener in self._listeners:
            try:
                listener.job_moved(outcome, before, after)
            except Exception:
                self.listener_failures += 1
                log.exception("outcome listener %r failed on %s of job %s", listener,
                              outcome.value, after.id)  # fmt: skip

    # --- new jobs --------------------------------------------------------------------------

    def trace_enqueue(self, job: Job, operation: str = "push") -> EnqueueSpan | None:
        """Open a push's span before its insert (tracing may add meta.traceparent)."""
        return self.tracing.start_enqueue(job, operation) if self.tracing is not None else None

    def enqueued(self, job: Job, now: int, span: EnqueueSpan | None = None) -> None:
        self.metrics.enqueued(job)
        if span is not None:
            span.end()
        self.events.emit(EventType.ENQUEUED, job, now)
        if job.state is JobState.SCHEDULED:
            self.events.emit(EventType.SCHEDULED, job, now)
        if self._listeners:
            self._tell(Outcome.ENQUEUED, None, job)

    def adopted(self, job: Job, now: int) -> None:
        """A job that reached a queue without us (binding PUSH), taken into the store."""
        if self.tracing is not None:
            self.tracing.start_enqueue(job, "adopt").end()
        self.metrics.enqueued(job)
        self.events.emit(EventType.ENQUEUED, job, job.enqueued_at_ms or now)
        if self._listeners:
            self._tell(Outcome.ENQUEUED, None, job)

    def retried_dead_letter(
        self, before: Job, new: Job, now: int, reason: str = "dead_letter_retry"
    ) -> None:
        self.events.emit(EventType.ENQUEUED, new, now, reason=reason)
        if self._listeners:
            self._tell(Outcome.ENQUEUED, before, new)

    # --- attempts --------------------------------------------------------------------------

    def started(self, before: Job, new: Job, now: int, *, trace: bool = True) -> None:
        """An attempt began (an HTTP lease, a native worker's first sign). `trace=False`:
        the span opens once the start is recorded (`trace_started`)."""
        queued_ms = now - (before.enqueued_at_ms or before.created_at_ms)
        self.metrics.started(new, max(0, queued_ms) / 1000)
        if trace and self.tracing is not None:
            self.tracing.started(new)
        self.events.emit(EventType.STARTED, new, now)
        if self._listeners:
            self._tell(Outcome.STARTED, before, new)

    def trace_started(self, job: Job) -> None:
        if self.tracing is not None:
            self.tracing.started(job)

    def heartbeat(self, job: Job, now: int, worker_id: str | None) -> None:
        self.events.emit(EventType.HEARTBEAT, job, now, worker_id=worker_id)

    def progress(self, job: Job, now: int, wire: dict[str, Any]) -> None:
        self.events.emit(
            EventType.PROGRESS, job, now, progress=wire["progress"], message=wire["message"],
            data=wire["data"],
        )  # fmt: skip

    def completed(self, active: Job, new: Job, now: int) -> None:
        duration = now - (active.started_at_ms or now)
        self.metrics.completed(new, duration / 1000)
        self.events.emit(EventType.COMPLETED, new, now, duration_ms=duration)
        if self.tracing is not None:
            self.tracing.finished(active, new, Outcome.COMPLETED)
        if self._listeners:
            self._tell(Outcome.COMPLETED, active, new)

    def failed(self, active: Job, new: Job, now: int) -> None:
        """An attempt failed: retrying, discarded, or (a requeue policy) available again."""
        self._failure_events(new, now)
        if self.tracing is not None:
            self.tracing.finished(active, new, Outcome.FAILED)
        if self._listeners:
            self._tell(Outcome.FAILED, active, new)

    def requeued(self, active: Job, new: Job) -> None:
        """A worker handed the job back (nack with requeue): not a failure."""
        if self.tracing is not None:
            self.tracing.finished(active, new, Outcome.REQUEUED)
        if self._listeners:
            self._tell(Outcome.REQUEUED, active, new)

    def lease_expired(
        self, active: Job, new: Job, now: int, kind: LeaseKind, *, failed: bool = True
    ) -> None:
        """The one place a lost or expired lease is counted (visibility, timeout, a native
        worker lost with the job), whichever part found it. `failed=False`: the attempt it
        charged is not announced as a failure (a native restart before the job ran again)."""
        self.metrics.lease_expired(active, kind)
        if failed:
            self._failure_events(new, now)
        if self.tracing is not None and new.state is not JobState.ACTIVE:
            self.tracing.finished(active, new, Outcome.LEASE_EXPIRED)
        if self._listeners:
            self._tell(Outcome.LEASE_EXPIRED, active, new)

    def _failure_events(self, new: Job, now: int) -> None:
        if new.state is JobState.AVAILABLE:
            return
        self.metrics.failed(new)
        self.events.emit(EventType.FAILED, new, now, error=new.error)
        if new.state is JobState.RETRYABLE:
            self.events.emit(EventType.RETRYING, new, now, retry_delay_ms=new.retry_delay_ms)
        elif new.state is JobState.DISCARDED:
            self.metrics.discarded(new)
            self.events.emit(EventType.DISCARDED, new, now, dead_letter=new.dead_letter)

    # --- endings without an attempt's outcome ----------------------------------------------

    def cancelled(self, before: Job, new: Job, now: int, reason: str | None = None) -> None:
        if self.tracing is not None:
            self.tracing.finished(before, new, Outcome.CANCELLED)
        if reason is None:
            self.events.emit(EventType.CANCELLED, new, now)
        else:
            self.events.emit(EventType.CANCELLED, new, now, reason=reason)
        if self._listeners:
            self._tell(Outcome.CANCELLED, before, new)

    def discarded_by_worker(self, active: Job, new: Job, now: int, delivery_limit: bool) -> None:
        """A worker's reject (requeue=false), or the broker's delivery limit."""
        self.metrics.discarded(new)
        if delivery_limit:
            self.metrics.delivery_limit_reached(new)
            log.warning("job %s (queue %s) was dead-lettered by the broker: %s",
                        new.id, new.queue, new.error and new.error.get("message"))  # fmt: skip
        if self.tracing is not None:
            self.tracing.finished(active, new, Outcome.DISCARDED)
        self.events.emit(EventType.DISCARDED, new, now)
        if self._listeners:
            self._tell(Outcome.DISCARDED, active, new)

    def expired(self, before: Job, new: Job, now: int) -> None:
        self.metrics.discarded(new)
        self.events.emit(EventType.EXPIRED, new, now)
        self.events.emit(EventType.DISCARDED, new, now, reason="expired")
        if self._listeners:
            self._tell(Outcome.EXPIRED, before, new)

    def timer_fired(self, before: Job, new: Job, late_s: float) -> None:
        self.metrics.timer_fired(new.queue, late_s)
        if self._listeners:
            self._tell(Outcome.TIMER_FIRED, before, new)

    # --- not moves, counted here so parts need no Metrics of their own ---------------------

    def renewed(self, reason: str) -> None:
        self.metrics.renewed(reason)

    def report(self, kind: str, applied: bool) -> None:
        self.metrics.report(kind, "applied" if applied else "stale")

    def dead_letters_pruned(self, count: int) -> None:
        self.metrics.dead_letters_pruned(count)

    def close(self) -> None:
        if self.tracing is not None:
            self.tracing.close()
