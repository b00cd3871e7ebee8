"""Native workers' reports (docs/amqp-protocol.md): outcomes, heartbeats, binding retries.

A native worker takes jobs straight from the job queue; the daemon hears of an attempt only
through what the worker sends. The edge (`native/edge.py`) parses the AMQP message; what
reaches this part is a `WorkerReport`, whatever its transport.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from ojs_amqp.core import lifecycle
from ojs_amqp.core.job import Job, JobState
from ojs_amqp.core.progress import ProgressUpdate
from ojs_amqp.core.retry import MAX_ATTEMPTS_LIMIT, FailureReport
from ojs_amqp.engine.adoption import Adoption
from ojs_amqp.engine.kinds import LeaseKind
from ojs_amqp.engine.leases import Leases
from ojs_amqp.engine.moves import Mover
from ojs_amqp.engine.outcomes import Outcomes
from ojs_amqp.engine.ports import JobRecords, Scheduler
from ojs_amqp.engine.progress import Progress
from ojs_amqp.engine.workers import WorkerRegistry
from ojs_amqp.errors import Duplicate, InvalidRequest


class WorkerReport(Protocol):
    """What a native worker said about one job (amqp.control.ControlMessage is one). A
    report without a `failure` is a completion."""

    @property
    def kind(self) -> str:
        """The message type, as a metrics label."""

    @property
    def job_id(self) -> str | None: ...
    @property
    def worker_id(self) -> str | None: ...
    @property
    def copy(self) -> int | None: ...
    @property
    def started_at_ms(self) -> int | None: ...
    @property
    def attempt(self) -> int | None: ...
    @property
    def result(self) -> Any: ...
    @property
    def failure(self) -> FailureReport | None: ...
    @property
    def envelope(self) -> dict[str, Any] | None: ...
    @property
    def started(self) -> bool: ...
    @property
    def delivery_count(self) -> int: ...
    @property
    def progress(self) -> ProgressUpdate | None: ...


class CopyRef(Protocol):
    """Which copy of which job a message says it is."""

    @property
    def job_id(self) -> str | None: ...
    @property
    def copy(self) -> int | None: ...


def _job_id(report: WorkerReport) -> str:
    if report.job_id is None:
        raise InvalidRequest("the report names no job")
    return report.job_id


class NativeReports:
    def __init__(
        self,
        store: JobRecords,
        scheduler: Scheduler,
        mover: Mover,
        leases: Leases,
        adoption: Adoption,
        progress: Progress,
        outcomes: Outcomes,
        workers: WorkerRegistry,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._workers = workers
        self._store = store
        self._now = scheduler.now_ms
        self._mover = mover
        self._leases = leases
        self._adoption = adoption
        self._progress = progress
        self._outcomes = outcomes
        self._rng = rng

    def start(
        self, job: Job, copy: int | None, started_at_ms: int, worker_id: str | None
    ) -> Job | None:
        """The job as active under a native worker, or None when a report on it is stale
        (about an older copy, finished, cancelled, waiting on a timer, or leased to an HTTP
        worker). `copy` is the one the worker was delivered (None: not known)."""
        if copy is not None and copy != job.copy:
            return None
        if job.id in self._leases:
            return None
        if job.state is JobState.AVAILABLE:
            active = lifecycle.fetch(job, started_at_ms, worker_id)
            self._outcomes.started(job, active, started_at_ms, trace=False)
            return active
        if job.state is JobState.ACTIVE:
            return job
        return None

    async def apply(self, report: WorkerReport, queue: str | None) -> Job | None:
        """A native worker's outcome. Returns None for a stale report (already finished or
        cancelled, or about an older copy: a duplicate execution), which changes nothing."""
        job_id = _job_id(report)
        self._workers.seen_on(report.worker_id, self._now(), [queue] if queue else [], "native")
        self._workers.holds(report.worker_id, job_id, done=True)
        job = await self._store.get(job_id)
        adopted = None
        if job is None and report.envelope is not None and report.failure is None:
            # Never seen (binding PUSH) and already done: adopt and complete in one write
            # (announced first, so its events keep their order).
            job = adopted = self._adoption.job_of(report.envelope, job_id, queue)
            self._adoption.announce(adopted)
        elif job is None:
            job = await self._adoption.known_or_adopted(job_id, report.envelope, queue)
        job = self._progress.with_progress(job)
        now = self._now()
        active = self.start(job, report.copy, report.started_at_ms or now, report.worker_id)
        if active is None:
            self._outcomes.report(report.kind, False)
            return None
        if report.failure is None:
            new = lifecycle.ack(active, now, report.result)
            if adopted is None:
                written = await self._store.update(new, expect_copy=job.copy)
            else:
                try:
                    await self._store.insert(new, published=True)
                    written = True
                except Duplicate:  # adopted meanwhile (a heartbeat, a delivery): start over
                    return await self.apply(report, queue)
            if written:
                self._outcomes.completed(active, new, now)
        else:
            if report.attempt is not None and active.attempt < report.attempt:
                # The worker counted attempts the daemon never saw: deliveries of this copy
                # that went back to the queue with a worker that died (x-delivery-count).
                active = replace(active, attempt=min(report.attempt, MAX_ATTEMPTS_LIMIT))
            new = lifecycle.fail(active, now, report.failure, self._rng)
            written = await self._mover.advance(new, None, job.copy)
            if written:
                self._outcomes.failed(active, new, now)
        self._outcomes.report(report.kind, written)
        return new if written else None

    async def heartbeat(self, beat: WorkerReport, queue: str | None) -> Job:
        """The first heartbeat of a native worker marks the job active, held by that worker
        (adopting a job pushed by binding PUSH if the beat carries its envelope)."""
        job = await self._adoption.known_or_adopted(_job_id(beat), beat.envelope, queue)
        now = self._now()
        self._workers.seen_on(beat.worker_id, now, [job.queue], kind="native")
        self._workers.holds(beat.worker_id, job.id, done=False)
        if beat.started and beat.copy == job.copy and job.id not in self._leases:
            return await self._restart(job, beat, now)
        if job.state is JobState.AVAILABLE:
            active = self.start(job, beat.copy, now, beat.worker_id)
            if active is not None and await self._store.update(active, expect_copy=job.copy):
                job = active
                self._outcomes.trace_started(active)
        if job.state is JobState.ACTIVE:
            self._outcomes.heartbeat(job, now, beat.worker_id)
        return job

    async def _restart(self, job: Job, beat: WorkerReport, now: int) -> Job:
        """A native worker is about to run a copy that went back to its queue unfinished
        (`x-delivery-count` >= 1), and asks first: the answer is the job as it then stands,
        and the worker runs it only if it is active. A previous start of this copy that never
        reported died with its worker: a failed attempt (ojs-retry §9.2), so a job that kills
        every worker ends per `on_exhaustion` instead of looping. A copy never started here
        before may still have run unannounced once (a first delivery does not ask): that is
        counted too, but never so as to discard a job that may not have run."""
        if job.state is JobState.AVAILABLE:
            active = self.start(job, beat.copy, now, beat.worker_id)
            if active is None:
                return job
            charged = active.attempt < job.retry.max_attempts
            if charged:
                active = lifecycle.worker_lost(active, now, beat.worker_id, beat.delivery_count)
            if await self._store.update(active, expect_copy=job.copy):
                if charged:
                    self._outcomes.lease_expired(job, active, now, LeaseKind.WORKER_LOST,
                                                 failed=False)  # fmt: skip
                self._outcomes.trace_started(active)
                return active
            return await self._progress.read(job.id)
        if job.state is not JobState.ACTIVE:
            return job
        new = lifecycle.worker_lost(job, now, beat.worker_id, beat.delivery_count)
        if new.state is JobState.ACTIVE:
            written = await self._store.update(new, expect_copy=job.copy)
        else:
            written = await self._mover.advance(new, None, job.copy)
        if not written:
            return await self._progress.read(job.id)
        self._outcomes.lease_expired(job, new, now, LeaseKind.WORKER_LOST)
        return new

    async def binding_retry(
        self, ref: CopyRef, body: Any, queue: str, delay_ms: int, report: FailureReport
    ) -> Job | None:
        """A worker following the binding republished a failed job to ojs.exchange.retry:
        park it for `delay_ms` (the policy still decides whether attempts are left)."""
        job_id = ref.job_id or (body.get("id") if isinstance(body, dict) else None)
        if not isinstance(job_id, str):
            raise InvalidRequest("the message names no job: set message_id to the job id")
        job = await self._adoption.known_or_adopted(job_id, body, queue)
        now = self._now()
        active = self.start(job, ref.copy, now, None)
        if active is None:
            return None
        new = lifecycle.fail_with_delay(active, now, report, delay_ms, self._rng)
        if not await self._mover.advance(new, None, job.copy):
            return None
        self._outcomes.failed(active, new, now)
        return new

    async def progress(self, report: WorkerReport, queue: str | None) -> Job:
        """A native worker's `ojs.control.progress`: a heartbeat (the first marks the job
        active, as `heartbeat` does) carrying a progress report."""
        if report.progress is None:
            raise InvalidRequest("the progress message carries no progress")
        await self.heartbeat(report, queue)
        job, _ = await self._progress.report(_job_id(report), report.progress, report.worker_id)
        return job
