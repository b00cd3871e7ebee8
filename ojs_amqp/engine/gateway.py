"""The gateway: the HTTP workers' side of job queues (docs/architecture.md, "Gateway").

From a queue's first FETCH on, the daemon consumes its job queue and buffers deliveries by
priority; a FETCH leases from the buffer. Consuming only while HTTP workers ask leaves the
queue to native workers otherwise: an idle gateway closes. Deliveries are never returned to
the broker (each return counts against a quorum queue's delivery limit): a delivery held too
long, or still buffered when its gateway closes, is renewed (a fresh copy, this one acked).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from ojs_amqp.core.envelope import validate_queue
from ojs_amqp.core.job import Job, JobState
from ojs_amqp.engine.adoption import Adoption
from ojs_amqp.engine.dispatch import Arrivals, Buffered, ReadyBuffers
from ojs_amqp.engine.leases import Leases
from ojs_amqp.engine.maintenance import Maintenance
from ojs_amqp.engine.moves import Mover
from ojs_amqp.engine.outcomes import Outcomes
from ojs_amqp.engine.ports import Delivery, DeliveryHandler, JobRecords, JobTransport, Scheduler
from ojs_amqp.engine.queues import QueueRegistry
from ojs_amqp.engine.workers import WorkerRegistry
from ojs_amqp.errors import InvalidRequest, OjsError
from ojs_amqp.settings import Settings

log = logging.getLogger("ojs_amqp.engine")

FETCH_MAX_COUNT = 100
#: How long a FETCH that opens a queue's gateway waits for the queue's waiting jobs.
GATEWAY_FILL_S = 0.5
#: Buffered deliveries renewed at once by the hold refresh (concurrent publishes).
RENEW_BATCH = 100
#: How long closing a gateway waits for deliveries still being handled before it closes
#: their channel (anything left unacked then goes back to the queue, counted once).
GATEWAY_DRAIN_S = 2.0


@dataclass(frozen=True, slots=True)
class GatewayPeers:
    """The parts the gateway works with."""

    mover: Mover
    leases: Leases
    maintenance: Maintenance
    adoption: Adoption
    queues: QueueRegistry
    workers: WorkerRegistry
    outcomes: Outcomes
    buffers: ReadyBuffers


class Gateway:
    def __init__(
        self,
        settings: Settings,
        transport: JobTransport,
        store: JobRecords,
        scheduler: Scheduler,
        parts: GatewayPeers,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._store = store
        self._scheduler = scheduler
        self._mono = scheduler.monotonic
        self._mover = parts.mover
        self._leases = parts.leases
        self._maintenance = parts.maintenance
        self._adoption = parts.adoption
        self._queues = parts.queues
        self._workers = parts.workers
        self._outcomes = parts.outcomes
        self.buffers = parts.buffers
        self._arrivals = Arrivals(scheduler)
        #: Job queues consumed for HTTP workers, and when one was last fetched from.
        self.open: dict[str, float] = {}
        #: Gateways being closed (their consumer cancelled, their buffer being renewed),
        #: and deliveries being handled per gateway queue (a close waits for them).
        self._closing: set[str] = set()
        self._handling: dict[str, int] = {}

    def expect(self, job: Job) -> None:
        """An available copy is being published: if its queue is consumed here, its
        delivery is expected (FETCH waits for it briefly, so FIFO holds right after a push)."""
        if job.queue in self.open:
            self.buffers.expect(job)

    # --- fetch -----------------------------------------------------------------------------

    async def fetch(
        self, queues: list[str], count: int, worker_id: str | None, visibility_ms: int | None
    ) -> list[Job]:
        if not queues:
            raise InvalidRequest("queues must list at least one queue")
        self._workers.seen_on(worker_id, self._scheduler.now_ms(), queues)
        if not self._workers.fetching(worker_id):
            return []  # quiet or draining: no new jobs (ojs-graceful-shutdown §5.1)
        mono = self._mono
        now_mono = mono()
        for queue in queues:
            if queue in self.open:  # consumed already: the usual case
                self.open[queue] = now_mono
                continue
            validate_queue(queue)
            await self._queues.ensure(queue)
            await self.open_queue(queue)
        count = max(1, min(count, FETCH_MAX_COUNT))
        deadline = now_mono + self._settings.fetch_wait_ms / 1000
        jobs: list[Job] = []
        while True:
            settle_until = mono() + 0.25
            while self.buffers.awaiting(queues) and mono() < settle_until:
                await self._arrivals.wait(queues, settle_until)
            for queue in queues:
                while len(jobs) < count:
                    delivery = self.buffers.pop(queue)
                    if delivery is None:
                        break
                    job = await self._lease(delivery, worker_id, visibility_ms)
                    if job is not None:
                        jobs.append(job)
            if jobs or mono() >= deadline:
                return jobs
            await self._arrivals.wait(queues, deadline)

    async def _lease(
        self, d: Buffered, worker_id: str | None, visibility_ms: int | None
    ) -> Job | None:
        now = self._scheduler.now_ms()
        expires = d.job.expires_at_ms
        if expires is not None and expires <= now:
            await self._maintenance.expire(d.job)
            self._mover.settle(d.message)
            return None
        return await self._leases.grant(d, worker_id, visibility_ms, now)

    # --- opening and closing ---------------------------------------------------------------

    async def open_queue(self, queue: str) -> None:
        """Consume the job queue for HTTP workers, from the first FETCH on."""
        self.open[queue] = self._mono()
        if self._transport.consuming_jobs(queue):
            return
        waiting = await self._transport.ready_count(queue)
        await self._transport.consume_jobs(queue, self._handler_for(queue))
        await self._fill(queue, min(waiting, self._transport.prefetch_hint))

    def _handler_for(self, queue: str) -> DeliveryHandler:
        async def on_job(delivery: Delivery) -> None:
            self._handling[queue] = self._handling.get(queue, 0) + 1
            try:
                await self.on_delivery(queue, delivery)
            finally:
                self._handling[queue] -= 1

        return on_job

    async def _fill(self, queue: str, expected: int) -> None:
        """Let the first prefetch burst of a newly consumed queue arrive (briefly), so its
        first FETCH hands out the highest priority waiting, not whatever landed first."""
        mono = self._mono
        deadline = mono() + GATEWAY_FILL_S
        while self.buffers.sizes().get(queue, 0) < expected and mono() < deadline:
            await self._arrivals.wait([queue], min(deadline, mono() + 0.01))

    async def close_idle(self) -> None:
        """Stop consuming queues no HTTP worker fetched from lately and none holds a lease
        on; their buffered jobs go back to the queue, to whichever worker comes."""
        cutoff = self._mono() - self._settings.gateway_idle_ms / 1000
        leased = set(self._leases.held_per_queue())
        for queue, last_fetch in list(self.open.items()):
            if last_fetch < cutoff and queue not in leased:
                del self.open[queue]
                await self._close(queue)

    async def _close(self, queue: str) -> None:
        """Close a gateway without returning its buffer to the broker: cancel the consumer
        (nothing more comes), renew what it holds, in the order FETCH would have handed it
        out, then close the channel with nothing unacked. Copies not renewed (broker away)
        return with it."""
        self._closing.add(queue)
        try:
            await self._transport.cancel_job_consumer(queue)
            for delivery in self.buffers.take_queue(queue):
                if not delivery.message.void:
                    await self.renew(delivery, "gateway_close")
            deadline = self._mono() + GATEWAY_DRAIN_S
            # Deliveries read before the cancel took effect: polled (bounded) rather than an
            # event that every delivery would have to touch.
            while self._handling.get(queue, 0) > 0 and self._mono() < deadline:
                await self._scheduler.sleep(0.01)
        finally:
            self._closing.discard(queue)
        await self._transport.stop_job_consumer(queue)
        self.buffers.drop_queue(queue)
        if queue in self.open:  # a FETCH came meanwhile: consume again, for it
            try:
                await self.open_queue(queue)
            except Exception:
                self.open.pop(queue, None)  # the next FETCH opens it
                raise

    # --- deliveries ------------------------------------------------------------------------

    async def on_delivery(self, queue: str, delivery: Delivery) -> None:
        if self._mover.wait_for_record(delivery, self.on_delivery(queue, delivery)):
            return
        job = None
        job_id = delivery.job_id
        if job_id:
            # A job we just published is taken as we published it; if it was cancelled or
            # moved meanwhile, the compare-and-set at lease time drops it.
            job = self.buffers.take_expected(queue, job_id)
            if job is None or job.copy != delivery.copy:
                job = await self._store.get(job_id)
        if job is None:
            job = await self._adoption.adopt(queue, delivery)
            if job is None:
                return
        elif delivery.copy is not None and delivery.copy != job.copy:
            self._mover.settle(delivery)  # a stale duplicate of an older state
            return
        if job.state is JobState.ACTIVE:
            await self._leases.recover_active(job, delivery)
            return
        if job.state is not JobState.AVAILABLE:
            self._mover.settle(delivery)
            return
        closing = queue in self._closing
        if (queue not in self.open and not closing) or delivery.void:
            return  # arrived while the gateway closed: its channel is gone, the broker has it
        if closing or delivery.returns > 0:
            # Arrived while the gateway closes, or returned by the broker (a lost connection,
            # a restart, a crashed worker): a fresh copy, so returns never add up to the
            # queue's delivery limit; the copy is buffered when it comes back.
            why = "gateway_close" if closing else "redelivered"
            if not await self.renew(Buffered(job, queue, delivery, self._mono()), why):
                self._buffer(queue, job, delivery)
            return
        self._buffer(queue, job, delivery)

    def _buffer(self, queue: str, job: Job, delivery: Delivery) -> None:
        if queue not in self.open:
            return  # arrived while the gateway closed: its channel is gone, the broker has it
        duplicate = self.buffers.remove(job.id)
        if duplicate is not None:  # two copies of one job: keep the newest, release the other
            self._mover.settle(duplicate.message)
        self.buffers.add(Buffered(job, queue, delivery, self._mono()))
        self._arrivals.arrived(queue)

    # --- renewals --------------------------------------------------------------------------

    async def refresh_held(self) -> None:
        """Buffered deliveries older than `delivery_hold_ms` are renewed before the broker's
        consumer_timeout closes the channel over them. The fresh copies come straight back
        to this consumer and keep their place in line here (FETCH waits for them briefly);
        behind a backlog larger than the prefetch they queue up behind it."""
        cutoff = self._mono() - self._settings.delivery_hold_ms / 1000
        held = self.buffers.take_older_than(cutoff)
        for start in range(0, len(held), RENEW_BATCH):
            batch = held[start : start + RENEW_BATCH]
            done = await asyncio.gather(
                *(self.renew(d, "hold") for d in batch), return_exceptions=True
            )
            for delivery, renewed in zip(batch, done, strict=True):
                if renewed is not True:  # not published: keep holding it, tried next round
                    if isinstance(renewed, BaseException):
                        log.error("renewing job %s failed", delivery.job_id, exc_info=renewed)
                    if delivery.queue in self.open and not delivery.message.void:
                        self.buffers.add(delivery)

    async def renew(self, delivery: Buffered, reason: str) -> bool:
        """Replace a buffered delivery by a fresh copy of its job instead of returning it to
        its queue: publish the next copy, record it, ack this one. A quorum queue counts
        every return (reject or nack with requeue, a closed channel, a lost connection)
        against its delivery limit (20 by default on RabbitMQ 4.x) and dead-letters the
        message past it, though no worker ever ran the job. False when the copy could not
        be published (the delivery is still held)."""
        job = await self._store.get(delivery.job_id)
        if job is None or job.copy != delivery.job.copy or job.state is not JobState.AVAILABLE:
            self._mover.settle(delivery.message)  # the job moved on meanwhile: this copy is stale
            return True
        try:
            written = await self._mover.advance(replace(job, copy=job.copy + 1),
                                                delivery.message, job.copy,
                                                JobState.AVAILABLE)  # fmt: skip
        except OjsError as exc:
            log.warning("could not renew the delivery of job %s (%s)", job.id, exc.message)
            return False
        if written:
            self._outcomes.renewed(reason)
        else:
            self._mover.settle(delivery.message)
        return True

    # --- letting go ------------------------------------------------------------------------

    def take_buffered(self, job_id: str) -> Buffered | None:
        return self.buffers.remove(job_id)

    def forget(self, queue: str | None = None) -> None:
        """The deliveries buffered (of one consumed queue, or all) are void."""
        if queue is None:
            self.buffers.clear()
        elif queue in self.open:
            self.buffers.drop_queue(queue)

    async def let_go_of(self, queue: str) -> None:
        """Stop consuming the queue (it is being deleted) and drop its buffer."""
        self.open.pop(queue, None)
        await self._transport.stop_queue_consumers(queue)
        self.buffers.drop_queue(queue)

    def reset(self) -> None:
        self.open.clear()
        self.buffers.clear()
