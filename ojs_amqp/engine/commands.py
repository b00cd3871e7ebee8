"""Commands on one job or worker: activate, cancel, heartbeat and worker directives."""

from __future__ import annotations

import logging

from ojs_amqp.core import lifecycle
from ojs_amqp.core.job import Job, JobState
from ojs_amqp.engine.gateway import Gateway
from ojs_amqp.engine.kinds import Directive
from ojs_amqp.engine.leases import Leases
from ojs_amqp.engine.moves import Mover
from ojs_amqp.engine.outcomes import Outcomes
from ojs_amqp.engine.ports import JobRecords, JobTransport, Scheduler
from ojs_amqp.engine.progress import Progress
from ojs_amqp.engine.workers import WorkerRegistry
from ojs_amqp.errors import BackendUnavailable, Conflict, InvalidRequest
from ojs_amqp.settings import Settings

log = logging.getLogger("ojs_amqp.engine")

#: Tries of a forced queue delete's cancel of one job that keeps moving meanwhile.
CANCEL_TRIES = 5


class Commands:
    def __init__(
        self,
        settings: Settings,
        store: JobRecords,
        transport: JobTransport,
        scheduler: Scheduler,
        parts: tuple[Mover, Leases, Gateway, Progress, Outcomes, WorkerRegistry],
    ) -> None:
        self._settings = settings
        self._store = store
        self._transport = transport
        self._now = scheduler.now_ms
        self._mover, self._leases, self._gateway, self._progress, self._outcomes, self._workers = (
            parts
        )
        self._directives: dict[str, Directive] = {}

    async def activate(self, job_id: str) -> Job:
        job = await self._progress.read(job_id)
        new = lifecycle.activate(job, self._now())
        await self._mover.advance(new, None, job.copy)
        return new

    async def cancel(self, job_id: str) -> Job:
        job = await self._progress.read(job_id)
        if job.state.terminal:
            raise Conflict(
                f"job {job_id} is already {job.state.value}; a finished job cannot be cancelled",
                details={"job_id": job_id, "current_state": job.state.value},
            )
        now = self._now()
        new = lifecycle.cancel(job, now)
        if not await self._store.update(new, expect_copy=job.copy):
            raise Conflict(f"job {job_id} changed while being cancelled; retry")
        lease = self._leases.take(job_id)
        if lease is not None:
            self._mover.settle(lease.message)
        buffered = self._gateway.take_buffered(job_id)
        if buffered is not None:
            self._mover.settle(buffered.message)
        elif lease is None and job.state in (JobState.AVAILABLE, JobState.ACTIVE):
            await self._tell_native_workers(new)
        self._outcomes.cancelled(job, new, now)
        return new

    async def cancel_for_delete(self, job: Job) -> bool:
        """Cancel a job of a queue being deleted (forced), with its job.cancelled event; a
        job that moved meanwhile is read again and cancelled then."""
        for _ in range(CANCEL_TRIES):
            if job.state.terminal:
                return False
            now = self._now()
            new = lifecycle.cancel(job, now)
            if await self._store.update(new, expect_copy=job.copy):
                lease = self._leases.take(job.id)
                if lease is None and job.state in (JobState.AVAILABLE, JobState.ACTIVE):
                    await self._tell_native_workers(new)
                self._outcomes.cancelled(job, new, now, reason="queue_deleted")
                return True
            fresh = await self._store.get(job.id)
            if fresh is None:
                return False
            job = fresh
        return False

    async def _tell_native_workers(self, job: Job) -> None:
        """A native worker may hold the job or receive it later: broadcast the cancel. The
        cancel is already recorded, so a lost broadcast only means the job runs and its
        report is ignored."""
        try:
            await self._transport.broadcast_cancel(job)
        except BackendUnavailable as exc:
            log.warning("could not tell native workers that %s is cancelled: %s", job.id, exc)

    # --- workers ---------------------------------------------------------------------------

    async def heartbeat(
        self, worker_id: str | None, job_ids: list[str], visibility_ms: int | None
    ) -> tuple[str, list[str]]:
        """Extend the leases named; answer the directive for this worker."""
        directive = self._directives.get(worker_id or "", Directive.RUNNING)
        now = self._now()
        self._workers.seen(worker_id, now)
        extended = [j for j in job_ids if self._leases.extend(j, worker_id, visibility_ms)]
        if self._settings.test_mode:
            for job_id in extended:
                directive = await self._test_directive(job_id, directive)
        for job_id in extended:
            job = await self._store.get(job_id)
            if job is not None:
                self._outcomes.heartbeat(job, now, worker_id)
        return directive, extended

    async def _test_directive(self, job_id: str, current: Directive) -> Directive:
        """Conformance hook: a job's meta.test_directive is echoed to the worker holding it."""
        job = await self._store.get(job_id)
        wanted = job.meta.get("test_directive") if job is not None else None
        if isinstance(wanted, str) and wanted in Directive.__members__.values():
            asked = Directive(wanted)
            if asked.rank > current.rank:
                return asked
        return current

    def set_worker_directive(self, worker_id: str, directive: str) -> None:
        if directive not in Directive.__members__.values():
            raise InvalidRequest(f"directive must be one of {', '.join(Directive)}")
        self._directives[worker_id] = Directive(directive)

    def worker_beat(
        self, worker_id: str, state: str | None, active_jobs: int | None
    ) -> tuple[str, str]:
        """A worker's beat with its state (`drain` when it shuts down): (its state as
        recorded, the directive for it)."""
        recorded = self._workers.beat(worker_id, state, active_jobs, self._now())
        return recorded, self._directives.get(worker_id, Directive.RUNNING)

    def reset(self) -> None:
        self._directives.clear()
