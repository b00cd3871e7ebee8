"""The eight OJS states, the closed transition table, and the pure moves between them.

Every function takes a job and returns a *new* job (the input is never mutated), so the
engine can publish the next copy first and only then record it (DESIGN §3).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

from ojs_amqp.core import progress
from ojs_amqp.core.job import MISSING, Job, JobState, evolve
from ojs_amqp.core.retry import Discard, FailureReport, Retry, decide_failure
from ojs_amqp.core.times import format_ms
from ojs_amqp.errors import InvalidTransition

#: Error history kept on a job; the spec asks for at least ten entries.
MAX_ERROR_HISTORY = 20


class Move(StrEnum):
    FETCH = "fetch"
    ACK = "ack"
    FAIL = "fail"
    CANCEL = "cancel"
    ACTIVATE = "activate"
    TIMER_DUE = "timer_due"
    LEASE_EXPIRED = "lease_expired"
    REQUEUE = "requeue"
    EXPIRE = "expire"
    RETRY_DEAD_LETTER = "retry_dead_letter"
    WORKER_DISCARD = "worker_discard"
    WORKER_LOST = "worker_lost"


S = JobState
#: (state, move) -> possible next states. FAIL and LEASE_EXPIRED branch on the retry policy.
TRANSITIONS: dict[tuple[JobState, Move], frozenset[JobState]] = {
    (S.AVAILABLE, Move.FETCH): frozenset({S.ACTIVE}),
    (S.ACTIVE, Move.ACK): frozenset({S.COMPLETED}),
    (S.ACTIVE, Move.FAIL): frozenset({S.RETRYABLE, S.DISCARDED}),
    (S.ACTIVE, Move.LEASE_EXPIRED): frozenset({S.AVAILABLE, S.DISCARDED}),
    (S.ACTIVE, Move.REQUEUE): frozenset({S.AVAILABLE}),
    (S.ACTIVE, Move.WORKER_DISCARD): frozenset({S.DISCARDED}),
    (S.ACTIVE, Move.WORKER_LOST): frozenset({S.ACTIVE, S.DISCARDED}),
    (S.PENDING, Move.ACTIVATE): frozenset({S.AVAILABLE}),
    (S.SCHEDULED, Move.TIMER_DUE): frozenset({S.AVAILABLE}),
    (S.RETRYABLE, Move.TIMER_DUE): frozenset({S.AVAILABLE}),
    (S.DISCARDED, Move.RETRY_DEAD_LETTER): frozenset({S.AVAILABLE}),
    **{(s, Move.CANCEL): frozenset({S.CANCELLED}) for s in
       (S.SCHEDULED, S.AVAILABLE, S.PENDING, S.ACTIVE, S.RETRYABLE)},
    **{(s, Move.EXPIRE): frozenset({S.DISCARDED}) for s in
       (S.SCHEDULED, S.AVAILABLE, S.PENDING, S.RETRYABLE)},
}  # fmt: skip


def check(job: Job, move: Move) -> frozenset[JobState]:
    """The states `move` may lead to from the job's state; raise InvalidTransition if none."""
    targets = TRANSITIONS.get((job.state, move))
    if targets is None:
        raise InvalidTransition(job.id, job.state.value, move.value)
    return targets


def fetch(job: Job, now_ms: int, worker_id: str | None) -> Job:
    check(job, Move.FETCH)
    return evolve(
        job, state=S.ACTIVE, attempt=job.attempt + 1, started_at_ms=now_ms, worker_id=worker_id,
        progress=None,  # progress belongs to one attempt (ojs-progress §5.3)
    )  # fmt: skip


def ack(job: Job, now_ms: int, result: Any = MISSING) -> Job:
    check(job, Move.ACK)
    return evolve(
        job, state=S.COMPLETED, completed_at_ms=now_ms, result=result, error=None,
        progress=progress.completed(job.progress),
    )  # fmt: skip


def _error_entry(job: Job, report: FailureReport, now_ms: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "code": report.code,
        "type": report.type or _type_from(report),
        "message": report.message,
        "attempt": job.attempt,
        "occurred_at": format_ms(now_ms),
    }
    if report.details:
        entry["details"] = report.details
    return entry


def _type_from(report: FailureReport) -> str:
    error_class = report.details.get("error_class")
    return error_class if isinstance(error_class, str) and error_class else report.code


def fail(job: Job, now_ms: int, report: FailureReport, rng: Callable[[], float]) -> Job:
    """A failed attempt: retryable with a backoff, or discarded; the error joins the history."""
    check(job, Move.FAIL)
    return _after_failure(job, now_ms, report, decide_failure(job.retry, job.attempt, report, rng))


def fail_with_delay(
    job: Job, now_ms: int, report: FailureReport, delay_ms: int, rng: Callable[[], float]
) -> Job:
    """A worker that follows the binding text retries by itself (ojs.exchange.retry, key
    `{queue}.{delay_ms}`): its delay replaces the policy's backoff, while max_attempts and
    non-retryable rules still decide whether there is a retry at all."""
    check(job, Move.FAIL)
    decision = decide_failure(job.retry, job.attempt, report, rng)
    if isinstance(decision, Retry):
        decision = Retry(delay_ms=max(0, delay_ms))
    return _after_failure(job, now_ms, report, decision)


def _after_failure(job: Job, now_ms: int, report: FailureReport, decision: Retry | Discard) -> Job:
    entry = _error_entry(job, report, now_ms)
    errors = [*job.errors, entry][-MAX_ERROR_HISTORY:]
    common: dict[str, Any] = {
        "error": entry, "errors": errors, "copy": job.copy + 1, "worker_id": None,
    }  # fmt: skip
    if isinstance(decision, Retry):
        return evolve(
            job,
            state=S.RETRYABLE,
            next_attempt_at_ms=now_ms + decision.delay_ms,
            retry_delay_ms=decision.delay_ms,
            **common,
        )
    return _discarded(job, now_ms, dead_letter=decision.dead_letter, **common)


def _discarded(job: Job, now_ms: int, *, dead_letter: bool, **changes: Any) -> Job:
    # completed_at is set on discard too: the suite reads it as "finished at".
    return evolve(
        job,
        state=S.DISCARDED,
        discarded_at_ms=now_ms,
        completed_at_ms=now_ms,
        dead_letter=dead_letter,
        next_attempt_at_ms=None,
        **changes,
    )


def lease_expired(job: Job, now_ms: int, kind: str, rng: Callable[[], float]) -> Job:
    """The worker went quiet: a failed attempt either way (ojs-retry §9.2), so a job that
    kills its worker cannot loop for ever. An execution timeout follows the retry policy like
    a nack. A visibility timeout with attempts left puts the job straight back to `available`
    (as the conformance suite expects, not `retryable` after a backoff); with none left,
    `on_exhaustion` applies (docs/conformance.md)."""
    if kind == "timeout":
        check(job, Move.FAIL)
        report = FailureReport(code="timeout", type="timeout", message="execution timeout exceeded")
        return _after_failure(
            job, now_ms, report, decide_failure(job.retry, job.attempt, report, rng)
        )
    check(job, Move.LEASE_EXPIRED)
    report = FailureReport(
        code="visibility_timeout", type="visibility_timeout", message="lease expired before ack"
    )
    if job.attempt >= max(1, job.retry.max_attempts):
        # §9.2: a timeout is always retryable, so only the attempt count can end it.
        dead_letter = job.retry.on_exhaustion == "dead_letter"
        return _after_failure(job, now_ms, report, Discard(dead_letter, "exhausted"))
    entry = _error_entry(job, report, now_ms)
    return evolve(
        job,
        state=S.AVAILABLE,
        enqueued_at_ms=now_ms,
        error=entry,
        errors=[*job.errors, entry][-MAX_ERROR_HISTORY:],
        worker_id=None,
        copy=job.copy + 1,
    )


def worker_lost(job: Job, now_ms: int, worker_id: str | None, returned: int) -> Job:
    """A native worker starts a job whose previous start never reported: that attempt ended
    with its worker (killed, crashed, cut off) and counts as failed (ojs-retry §9.2). With
    attempts left the new start is the next attempt, on the same broker copy (the delivery
    being run is that copy); with none left, `on_exhaustion` applies."""
    check(job, Move.WORKER_LOST)
    report = FailureReport(
        code="worker_lost", type="worker_lost",
        message=f"attempt {job.attempt} ended with its worker: the job went back to its queue "
        "unfinished",
        details={"delivery_count": returned},
    )  # fmt: skip
    if job.attempt >= max(1, job.retry.max_attempts):
        dead_letter = job.retry.on_exhaustion == "dead_letter"
        return _after_failure(job, now_ms, report, Discard(dead_letter, "exhausted"))
    entry = _error_entry(job, report, now_ms)
    return evolve(
        job, attempt=job.attempt + 1, started_at_ms=now_ms, worker_id=worker_id, error=entry,
        errors=[*job.errors, entry][-MAX_ERROR_HISTORY:],
    )  # fmt: skip


def requeue(job: Job, now_ms: int) -> Job:
    """Worker hands the job back (nack with requeue): no attempt is spent."""
    check(job, Move.REQUEUE)
    return evolve(
        job, state=S.AVAILABLE, attempt=max(0, job.attempt - 1), enqueued_at_ms=now_ms,
        worker_id=None, copy=job.copy + 1,
    )  # fmt: skip


def cancel(job: Job, now_ms: int) -> Job:
    check(job, Move.CANCEL)
    return evolve(job, state=S.CANCELLED, cancelled_at_ms=now_ms, copy=job.copy + 1)


def activate(job: Job, now_ms: int) -> Job:
    check(job, Move.ACTIVATE)
    return evolve(
        job, state=S.AVAILABLE, activated_at_ms=now_ms, enqueued_at_ms=now_ms, copy=job.copy + 1
    )


def timer_due(job: Job, now_ms: int) -> Job:
    """A scheduled or retryable job's time has come."""
    check(job, Move.TIMER_DUE)
    return evolve(job, state=S.AVAILABLE, enqueued_at_ms=now_ms, copy=job.copy + 1)


def expire(job: Job, now_ms: int) -> Job:
    check(job, Move.EXPIRE)
    entry = {"code": "expired", "type": "expired", "message": "job expired before it ran",
             "attempt": job.attempt, "occurred_at": format_ms(now_ms)}  # fmt: skip
    # An expired job never ran, so it has no completed_at (the suite checks its absence).
    expired = _discarded(job, now_ms, dead_letter=False, error=entry, copy=job.copy + 1)
    return evolve(expired, completed_at_ms=None)


def worker_discard(job: Job, now_ms: int, reason: str, code: str = "rejected") -> Job:
    """A native worker rejected the message (Basic.Nack requeue=false), or the broker
    dead-lettered it after its workers returned it too often (`code` "delivery_limit"): a
    dead letter."""
    check(job, Move.WORKER_DISCARD)
    entry = {"code": code, "type": code, "message": reason,
             "attempt": job.attempt, "occurred_at": format_ms(now_ms)}  # fmt: skip
    history = [*job.errors, entry][-MAX_ERROR_HISTORY:]
    return _discarded(
        job, now_ms, dead_letter=True, error=entry, errors=history, worker_id=None,
        copy=job.copy + 1,
    )  # fmt: skip


def retry_dead_letter(job: Job, now_ms: int) -> Job:
    """Manual retry from the dead-letter list: a fresh start, history kept."""
    check(job, Move.RETRY_DEAD_LETTER)
    return evolve(
        job, state=S.AVAILABLE, attempt=0, enqueued_at_ms=now_ms, dead_letter=False,
        discarded_at_ms=None, completed_at_ms=None, started_at_ms=None, error=None,
        next_attempt_at_ms=None, copy=job.copy + 1,
    )  # fmt: skip
