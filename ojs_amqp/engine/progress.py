"""Progress of active jobs (ojs-progress), and reading a job as it now stands.

Reported progress is kept in memory and written to the store once a second (the latest
value, not each one); reads see it at once, and every move out of `active` takes it along
(`with_progress`). At most one `progress.updated` event per job per PROGRESS_FLUSH_S.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ojs_amqp.core import progress
from ojs_amqp.core.job import Job, JobState, evolve
from ojs_amqp.core.progress import ProgressUpdate
from ojs_amqp.engine.outcomes import Outcomes
from ojs_amqp.engine.ports import JobRecords, Scheduler
from ojs_amqp.errors import NotFound

if TYPE_CHECKING:
    from ojs_amqp.engine.leases import Leases

#: How often reported progress is written to the store, and the least time between two
#: progress events of one job (ojs-progress §6.2: the latest value is kept, not each one).
PROGRESS_FLUSH_S = 1.0


class Progress:
    def __init__(self, store: JobRecords, scheduler: Scheduler, outcomes: Outcomes) -> None:
        self._store = store
        self._scheduler = scheduler
        self._outcomes = outcomes
        #: Wired by the engine once the leases exist (a report counts as a heartbeat).
        self.leases: Leases | None = None
        #: job id -> progress reported since the last store write (core/progress.py).
        self._latest: dict[str, dict[str, Any]] = {}
        #: job id -> monotonic time of its last progress event; and the jobs whose latest
        #: progress is still to be announced (held back by the one-per-second limit).
        self._announced: dict[str, float] = {}
        self._unannounced: set[str] = set()

    async def read(self, job_id: str) -> Job:
        """The job as it now stands (with progress not yet stored), or NotFound."""
        job = await self._store.get(job_id)
        if job is None:
            raise NotFound(
                f"job {job_id} not found", details={"resource_type": "job", "resource_id": job_id}
            )
        return self.with_progress(job)

    def with_progress(self, job: Job) -> Job:
        """The job with its latest reported progress, which may not be in the store yet."""
        latest = self._latest.get(job.id)
        if latest is None or job.state is not JobState.ACTIVE or latest["attempt"] != job.attempt:
            return job
        return evolve(job, progress=latest)

    async def report(
        self, job_id: str, update: ProgressUpdate, worker_id: str | None = None
    ) -> tuple[Job, bool]:
        """Take a progress report for an active job: (the job as it now reads, applied).

        A report for a job that is not active (finished, cancelled, back in its queue) or is
        held by another worker changes nothing and is not an error: progress is
        fire-and-forget (PRG-007). It counts as a heartbeat (PRG-008)."""
        job = await self.read(job_id)
        if job.state is not JobState.ACTIVE or (
            worker_id and job.worker_id and worker_id != job.worker_id
        ):
            return job, False
        merged = progress.merge(job.progress, update, job.attempt, self._scheduler.now_ms())
        self._latest[job_id] = merged
        if self.leases is not None:
            self.leases.touch(job_id)
        job = evolve(job, progress=merged)
        self._announce(job)
        return job, True

    def _announce(self, job: Job) -> None:
        last = self._announced.get(job.id)
        mono = self._scheduler.monotonic()
        if last is not None and mono - last < PROGRESS_FLUSH_S:
            self._unannounced.add(job.id)
            return
        self._announced[job.id] = mono
        self._unannounced.discard(job.id)
        self._outcomes.progress(job, self._scheduler.now_ms(), progress.to_wire(job.progress))

    async def flush(self) -> None:
        """Write the latest progress of each job reported since the last flush (one store
        write per job per second, however often its worker reports). A job that left
        `active` (or started another attempt) meanwhile is skipped: its move took the
        progress along. The read and the write below run without yielding to another task
        (SQLite store calls do not suspend before their write), so no move slips between;
        the value leaves memory only once the store has it."""
        unannounced, self._unannounced = self._unannounced, set()
        for job_id, latest in list(self._latest.items()):
            job = await self._store.get(job_id)
            current = job is not None and job.state is JobState.ACTIVE
            if job is not None and current and job.attempt == latest["attempt"]:
                stored = evolve(job, progress=latest)
                current = await self._store.update(stored, expect_copy=job.copy)
                if current and self.leases is not None:
                    lease = self.leases.get(job_id)
                    if lease is not None and lease.job.attempt == job.attempt:
                        lease.job = evolve(lease.job, progress=latest)
            else:
                current = False
            if self._latest.get(job_id) is latest:
                del self._latest[job_id]
            if not current:
                self._announced.pop(job_id, None)
            elif job_id in unannounced and job is not None:
                self._announced.pop(job_id, None)
                self._announce(evolve(job, progress=latest))
        stale = self._scheduler.monotonic() - 2 * PROGRESS_FLUSH_S
        for job_id, announced in list(self._announced.items()):
            if announced < stale:
                del self._announced[job_id]

    def forget(self, job_id: str) -> None:
        """The job's attempt ended and its move took the progress along."""
        self._latest.pop(job_id, None)
        self._unannounced.discard(job_id)

    def reset(self) -> None:
        self._latest.clear()
        self._announced.clear()
        self._unannounced.clear()
