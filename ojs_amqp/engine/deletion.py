"""Deleting an OJS queue, and the test-mode reset that deletes them all."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ojs_amqp.core.envelope import validate_queue
from ojs_amqp.core.job import Job
from ojs_amqp.engine.commands import Commands
from ojs_amqp.engine.gateway import Gateway
from ojs_amqp.engine.leases import Leases
from ojs_amqp.engine.moves import Mover
from ojs_amqp.engine.ports import JobTransport, Scheduler
from ojs_amqp.engine.queues import QueueRegistry, QueueStore
from ojs_amqp.errors import Conflict, NotFound, QueueNotEmpty

log = logging.getLogger("ojs_amqp.engine")

#: How long deleting a queue waits for moves of its jobs already under way to be recorded.
DELETE_DRAIN_S = 10.0
#: How long a test-mode reset waits for its queue deletes; the rest go on in the background
#: (a queue still being deleted is declared again only once its delete is done), so the reset
#: answers within this bound however many queues it deletes.
RESET_DELETE_BUDGET_S = 5.0
#: Jobs cancelled at once by a forced delete.
CANCEL_BATCH = 500


class QueueDeletion:
    def __init__(
        self,
        transport: JobTransport,
        store: QueueStore,
        scheduler: Scheduler,
        queues: QueueRegistry,
        parts: tuple[Mover, Gateway, Leases, Commands],
    ) -> None:
        self._transport = transport
        self._store = store
        self._scheduler = scheduler
        self._queues = queues
        self._mover, self._gateway, self._leases, self._commands = parts

    async def delete_queue(self, queue: str, force: bool) -> dict[str, Any]:
        """Remove an OJS queue: its broker queues (job, control, dead-letter) and its store
        rows. Refused (409) while it holds unfinished jobs, unless `force`, which cancels
        them first. What the daemon holds for it (gateway, buffer, leases, consumers) goes
        too; timers of its jobs on the delay ladder find no job when due and are dropped. A
        later push or fetch simply declares the queue again."""
        validate_queue(queue)
        registry = self._queues
        if queue in registry.deleting:
            raise Conflict(f"queue {queue!r} is being deleted; retry shortly",
                           details={"queue": queue})  # fmt: skip
        known = queue in registry.ready or any(
            info.name == queue for info in await self._store.queues()
        )
        if not known and not await self._store.unfinished(queue):
            raise NotFound(f"queue {queue!r} not found",
                           details={"resource_type": "queue", "resource_id": queue})  # fmt: skip
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        registry.deleting[queue] = gate  # from here on, a first use of the queue waits
        was_ready = queue in registry.ready
        registry.ready.discard(queue)
        try:
            await self._drain_moves(queue)
            open_jobs = await self._store.unfinished(queue)
            if open_jobs and not force:
                by_state: dict[str, int] = {}
                for job in open_jobs:
                    by_state[job.state.value] = by_state.get(job.state.value, 0) + 1
                if was_ready:
                    registry.ready.add(queue)
                raise QueueNotEmpty(
                    f"queue {queue!r} holds {len(open_jobs)} unfinished jobs; delete with "
                    "force=true to cancel them and delete it anyway",
                    details={"queue": queue, "open_jobs": by_state},
                )
            cancelled = await self._cancel_all(open_jobs)
            await self._gateway.let_go_of(queue)
            self._leases.drop_queue(queue)
            names = self._transport.broker_queues(queue)
            await self._transport.delete_broker_queues(names)
            removed = await self._store.delete_queue(queue)
        finally:
            if registry.deleting.get(queue) is gate:
                del registry.deleting[queue]
            gate.set_result(None)
        log.info("deleted queue %s: %d broker queues, %d jobs (%d of them cancelled)",
                 queue, len(names), removed, cancelled)  # fmt: skip
        return {"queue": queue, "deleted": True, "broker_queues": names,
                "jobs_deleted": removed, "jobs_cancelled": cancelled}  # fmt: skip

    async def _drain_moves(self, queue: str) -> None:
        """Wait (bounded) for moves of the queue's jobs already publishing their next copy:
        once recorded, they are counted (and cancelled if forced) like any other job."""
        deadline = self._scheduler.monotonic() + DELETE_DRAIN_S
        while self._scheduler.monotonic() < deadline:
            moving = [await self._store.get(job_id) for job_id in self._mover.moving()]
            if not any(job is not None and job.queue == queue for job in moving):
                return
            await self._scheduler.sleep(0.01)

    async def _cancel_all(self, jobs: list[Job]) -> int:
        cancelled = 0
        for start in range(0, len(jobs), CANCEL_BATCH):
            chunk = jobs[start : start + CANCEL_BATCH]
            results = await asyncio.gather(*(self._commands.cancel_for_delete(j) for j in chunk))
            cancelled += sum(results)
        return cancelled

    async def delete_all(self, before_purge: Any) -> int:
        """Test-mode reset's broker side: the queues of every OJS queue are deleted (a purge
        would leave them costing the broker file handles); the fixed topology is only
        purged, as the daemon needs it at once. `before_purge()` forgets what the engine
        holds, once no consumer delivers any more. Returns how many OJS queues."""
        registry = self._queues
        queues = await registry.known()
        registry.ready.clear()
        self._gateway.open.clear()
        # Until their deletes start, a use of these queues waits (then for the delete).
        hold: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for queue in queues:
            registry.deleting.setdefault(queue, hold)
        try:
            # The queues of OJS queues: their consumers stop with their (bounded) delete.
            per_queue = {name for queue in queues for name in self._transport.broker_queues(queue)}
            await self._transport.stop_consumers_except(per_queue)
            before_purge()
            # Purged first: beside hundreds of deletes, a purge waits seconds for its turn.
            await self._transport.purge_fixed()
            deletes = registry.start_deletes(queues, per_queue, hold)
        finally:
            for queue in queues:
                if registry.deleting.get(queue) is hold:
                    del registry.deleting[queue]
            hold.set_result(None)
        await registry.wait_for_deletes(deletes, RESET_DELETE_BUDGET_S)
        return len(queues)
