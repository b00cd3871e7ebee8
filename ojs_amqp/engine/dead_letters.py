"""Dead letters: what reaches a queue's dead-letter queue, and the dead-letter API.

Our own discards carry the *next* copy number and are recorded by the move that published
them, so they are only acked here. A copy whose number matches an available or active
job's is a worker's reject (requeue=false, AMQP-009) or the broker's delivery limit; a job
never seen before is adopted first.
"""

from __future__ import annotations

import logging
from typing import Protocol

import orjson

from ojs_amqp.core import lifecycle
from ojs_amqp.core.job import Job, JobState
from ojs_amqp.engine.adoption import Adoption
from ojs_amqp.engine.leases import Leases
from ojs_amqp.engine.moves import Mover
from ojs_amqp.engine.native import NativeReports
from ojs_amqp.engine.outcomes import Outcomes
from ojs_amqp.engine.ports import DELIVERY_LIMIT, Delivery, Housekeeping, JobRecords, Scheduler
from ojs_amqp.errors import Conflict, NotFound, OjsError

log = logging.getLogger("ojs_amqp.engine")


class DeadLetterStore(JobRecords, Housekeeping, Protocol):
    """The store roles dead letters use."""


class DeadLetters:
    def __init__(
        self,
        store: DeadLetterStore,
        scheduler: Scheduler,
        mover: Mover,
        leases: Leases,
        native: NativeReports,
        adoption: Adoption,
        outcomes: Outcomes,
    ) -> None:
        self._store = store
        self._now = scheduler.now_ms
        self._mover = mover
        self._leases = leases
        self._native = native
        self._adoption = adoption
        self._outcomes = outcomes

    async def on_dead_letter(self, delivery: Delivery) -> None:
        """Archive what reached ojs.queue.dlx.{q}."""
        try:
            if delivery.state == JobState.DISCARDED.value:
                # Ours, never a worker's: recorded by its move, or left by a crash before the
                # record, when a later move may reuse its copy number (a renewal, a lease
                # lost with the daemon) and the copy check alone would not tell.
                self._mover.settle(delivery)
                return
            job_id = delivery.job_id
            job = await self._store.get(job_id) if job_id else None
            if job is None and job_id:
                body = orjson.loads(delivery.body)
                job = await self._adoption.envelope(body, job_id, delivery.queue)
            if job is not None and delivery.death_reason == DELIVERY_LIMIT:
                await self._worker_rejected(job, delivery.copy, DELIVERY_LIMIT,
                                            _delivery_limit_message(delivery.returns))  # fmt: skip
            elif job is not None:
                await self._worker_rejected(job, delivery.copy)
        except (OjsError, orjson.JSONDecodeError) as exc:
            log.warning("could not archive a dead letter: %s", exc)
        self._mover.settle(delivery)

    async def _worker_rejected(
        self, job: Job, copy: int | None, code: str = "rejected", reason: str = ""
    ) -> None:
        """A worker's reject (requeue=false), or (code `delivery_limit`) the broker
        dead-lettered the job because its workers returned it past the queue's delivery
        limit: a native worker that dies on the job, typically. The daemon's own returns
        never get there (the gateway renews instead)."""
        if copy is not None and copy != job.copy:
            return
        leased = job.id in self._leases
        active = job if leased else self._native.start(job, copy, self._now(), None)
        if active is None or active.state is not JobState.ACTIVE:
            return
        new = lifecycle.worker_discard(active, self._now(), reason or "rejected by a worker", code)
        if await self._store.update(new, expect_copy=job.copy):
            self._leases.take(job.id)
            self._outcomes.discarded_by_worker(active, new, self._now(), code == DELIVERY_LIMIT)

    # --- the dead-letter API ---------------------------------------------------------------

    async def page(self, queue: str | None, limit: int, offset: int) -> tuple[list[Job], int]:
        return await self._store.dead_letters(queue, limit, offset)

    async def _dead_letter(self, job_id: str) -> Job:
        job = await self._store.get(job_id)
        if job is None or not (job.state is JobState.DISCARDED and job.dead_letter):
            raise NotFound(
                f"no dead letter with id {job_id}",
                details={"resource_type": "dead_letter", "resource_id": job_id},
            )
        return job

    async def retry(self, job_id: str) -> Job:
        job = await self._dead_letter(job_id)
        new = lifecycle.retry_dead_letter(job, self._now())
        await self._mover.advance(new, None, job.copy)
        self._outcomes.retried_dead_letter(job, new, self._now())
        return new

    async def delete(self, job_id: str) -> None:
        await self._dead_letter(job_id)
        await self._store.delete(job_id)

    async def _job(self, job_id: str) -> Job:
        job = await self._store.get(job_id)
        if job is None:
            raise NotFound(
                f"no job with id {job_id}", details={"resource_type": "job", "resource_id": job_id}
            )
        return job

    async def retry_job(self, job_id: str) -> Job:
        """Admin retry of a discarded job by id (`retry_discarded`)."""
        return await self.retry_discarded(await self._job(job_id))

    async def delete_finished_job(self, job_id: str) -> None:
        """Admin delete of a finished job's record by id (`delete_finished`)."""
        await self.delete_finished(await self._job(job_id))

    async def retry_discarded(self, job: Job) -> Job:
        """Admin retry of a discarded job (dead letter or not): available again, attempts
        reset, its history kept (ojs-admin-api §7.4). A cancelled job stays cancelled: the
        state machine lets nothing leave `cancelled` (push a copy instead)."""
        if job.state is not JobState.DISCARDED:
            raise Conflict(
                f"job {job.id} is {job.state.value}: only a discarded job can be retried"
                + ("; push a copy of a cancelled one" if job.state is JobState.CANCELLED else ""),
                details={"job_id": job.id, "current_state": job.state.value},
            )
        new = lifecycle.retry_dead_letter(job, self._now())
        await self._mover.advance(new, None, job.copy)
        self._outcomes.retried_dead_letter(job, new, self._now(), reason="admin_retry")
        return new

    async def delete_finished(self, job: Job) -> None:
        """Admin delete of a finished (completed, cancelled or discarded) job's record."""
        if not job.state.terminal:
            raise Conflict(
                f"job {job.id} is {job.state.value}: only a finished job can be deleted; "
                "cancel it first",
                details={"job_id": job.id, "current_state": job.state.value},
            )
        await self._store.delete(job.id)


def _delivery_limit_message(returns: int) -> str:
    times = f" after {returns} deliveries" if returns else ""  # RabbitMQ 4.x says; 3.x: 0
    return (
        f"the broker dead-lettered the job{times}: its workers took it and returned it "
        "(a crash, a closed channel) more often than the queue's delivery limit allows, "
        "without reporting an outcome"
    )
