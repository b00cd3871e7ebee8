"""Recovery: what the engine does when the transport reports on the broker link (it is the
engine's `TransportListener`)."""

from __future__ import annotations

import logging
from dataclasses import replace

from ojs_amqp.core.job import JobState
from ojs_amqp.engine.gateway import Gateway
from ojs_amqp.engine.leases import Leases
from ojs_amqp.engine.moves import Mover
from ojs_amqp.engine.ports import QueueRecords
from ojs_amqp.engine.producer import Producer
from ojs_amqp.engine.queues import QueueRegistry
from ojs_amqp.engine.timers import Timers

log = logging.getLogger("ojs_amqp.engine")


class Recovery:
    def __init__(
        self,
        store: QueueRecords,
        queues: QueueRegistry,
        parts: tuple[Mover, Gateway, Leases, Timers, Producer],
    ) -> None:
        self._store = store
        self._queues = queues
        self._mover, self._gateway, self._leases, self._timers, self._producer = parts

    def connection_lost(self) -> None:
        """The consume connection is gone: every delivery tag we hold is void."""
        self._gateway.forget()
        self._leases.forget_deliveries()
        self._timers.let_go()

    def job_consumer_lost(self, queue: str) -> None:
        """The broker closed one consumer's channel: what it delivered is void and will be
        delivered again. Buffered jobs of that queue are dropped (their redelivery buffers
        them again); a lease keeps its job and takes the redelivered message when it comes."""
        if queue in self._gateway.open:
            self._gateway.forget(queue)
            self._leases.forget_deliveries(queue)

    def due_consumer_lost(self) -> None:
        self._timers.let_go()  # held again when redelivered

    async def reconnected(self) -> None:
        await self._producer.replay_outbox()

    async def job_queue_restored(self, queue: str) -> None:
        """The broker cancelled our consumer of a job queue (it was deleted) and it exists
        again, empty: the store is the authority, so every job it shows available there
        gets a new copy. Copies that survived somewhere are stale by their copy number."""
        if queue not in self._queues.ready:
            return
        jobs = await self._store.available(queue)
        for job in jobs:
            # A job leased since the read keeps its copy number: only its state tells.
            new = replace(job, copy=job.copy + 1)
            await self._mover.advance(new, None, job.copy, JobState.AVAILABLE)
        log.warning("queue %s was lost on the broker: republished %d available jobs from the "
                    "store", queue, len(jobs))  # fmt: skip
