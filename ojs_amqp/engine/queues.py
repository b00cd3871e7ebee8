"""The OJS queues the daemon has declared, and the gates that make a use of a queue being
deleted wait for its delete (then declare it afresh)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from ojs_amqp.core.job import Job
from ojs_amqp.engine.ports import DeliveryHandler, JobRecords, JobTransport, QueueRecords, Scheduler
from ojs_amqp.errors import Conflict

log = logging.getLogger("ojs_amqp.engine")


class QueueStore(JobRecords, QueueRecords, Protocol):
    """The store roles the registry uses."""


async def _no_dead_letters(_: object) -> None:
    raise AssertionError("dead letters consumed before the engine was wired")


class QueueRegistry:
    def __init__(self, transport: JobTransport, store: QueueStore, scheduler: Scheduler) -> None:
        self._transport = transport
        self._store = store
        self._scheduler = scheduler
        self.ready: set[str] = set()
        #: Queues being deleted from the broker: a use of one waits for its delete first.
        self.deleting: dict[str, asyncio.Future[None]] = {}
        #: Consumes each queue's dead letters (the dead-letter part, wired by the engine).
        self.dead_letter_handler: DeliveryHandler = _no_dead_letters
        #: Called once per job queue when the daemon first declares it (the native edge
        #: starts consuming its control queue).
        self.on_new_queue: list[Callable[[str], Awaitable[None]]] = []

    async def ensure(self, queue: str) -> bool:
        """Declare the queue on its first use; True if that first waited for its delete."""
        if queue in self.ready:
            return False
        waited = False
        while (deleting := self.deleting.get(queue)) is not None:
            await asyncio.wait([deleting])  # whatever its outcome, declared afresh below
            waited = True
        await self._transport.declare_queue(queue)
        await self._transport.consume_dead_letters(queue, self.dead_letter_handler)
        await self._store.add_queue(queue, self._scheduler.now_ms())
        self.ready.add(queue)
        for hook in self.on_new_queue:
            await hook(queue)
        return waited

    async def outlived_its_queue(self, job: Job) -> None:
        """Declare the job's queue if needed. A move that had to wait for the queue's delete
        may be about a job deleted with it: published, it would come back as a new job."""
        if await self.ensure(job.queue) and await self._store.get(job.id) is None:
            raise Conflict(
                f"queue {job.queue!r} was deleted, with job {job.id}, while the job was "
                "being moved or pushed; it was not enqueued",
                details={"queue": job.queue, "job_id": job.id},
            )

    async def known(self) -> set[str]:
        return self.ready | {info.name for info in await self._store.queues()}

    def delete_in_background(
        self,
        queue: str,
        names: list[str] | None = None,
        hold: asyncio.Future[None] | None = None,
    ) -> asyncio.Future[None]:
        """Start deleting the broker queues of `queue` (or just `names`), gating its next
        use until done (in place of `hold`)."""
        pending = self.deleting.get(queue)
        if pending is not None and pending is not hold:  # not declared again since
            return pending
        if names is None:
            names = self._transport.broker_queues(queue)
        task = asyncio.ensure_future(self._transport.delete_broker_queues(names))
        self.deleting[queue] = task
        deleted = names

        def done(finished: asyncio.Future[None]) -> None:
            if self.deleting.get(queue) is finished:
                del self.deleting[queue]
            if not finished.cancelled() and finished.exception() is not None:
                log.warning("deleting %s failed: %s", ", ".join(deleted), finished.exception())

        task.add_done_callback(done)
        return task

    def start_deletes(
        self, queues: set[str], names: set[str], hold: asyncio.Future[None]
    ) -> list[asyncio.Future[None]]:
        """Start deleting the broker queues of `queues` (`names`), each OJS queue's at once
        with the others', and any other non-fixed queue declared. `hold` is what uses of
        the queues wait for until then."""
        strays = self._transport.stray_queues(names)
        deletes = [self.delete_in_background(queue, hold=hold) for queue in queues]
        if strays:  # declared for a queue the store never recorded (a failed first use)
            deletes.append(self.delete_in_background("", strays))
        return deletes

    @staticmethod
    async def wait_for_deletes(deletes: list[asyncio.Future[None]], budget_s: float) -> None:
        """Wait at most `budget_s`; deletes still running then finish in the background (a
        use of their queue waits for them)."""
        if deletes:
            _, running = await asyncio.wait(deletes, timeout=budget_s)
            if running:
                log.warning("%d of %d queue deletes still running after %.0fs; they go on in "
                            "the background", len(running), len(deletes), budget_s)  # fmt: skip
