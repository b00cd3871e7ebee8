"""JobEngine: one method per OJS operation, over the pure core, the store and the broker.

Every move between states follows one rule (DESIGN §3): publish the next copy with a confirm,
then record it in the store, then ack the current copy. A crash between the steps leaves at
worst a duplicate copy, which is dropped on delivery because its copy number is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

import orjson
from pamqp.commands import Basic

from ojs_amqp.amqp import codec, protocol
from ojs_amqp.amqp.broker import Broker
from ojs_amqp.amqp.control import ControlMessage
from ojs_amqp.amqp.inbound import Inbound
from ojs_amqp.amqp.topology import DUE_ROUTING_KEY, ladder_level_for, ladder_routing_key
from ojs_amqp.clock import now_ms
from ojs_amqp.core import lifecycle, progress
from ojs_amqp.core.envelope import parse_enqueue, validate_queue
from ojs_amqp.core.ids import UUIDv7Generator, is_uuidv7
from ojs_amqp.core.job import SYSTEM_FIELDS, Job, JobState, evolve
from ojs_amqp.core.progress import ProgressUpdate
from ojs_amqp.core.retry import MAX_ATTEMPTS_LIMIT, FailureReport
from ojs_amqp.core.times import parse_rfc3339_ms
from ojs_amqp.engine.backpressure import DepthCache
from ojs_amqp.engine.dispatch import Arrivals, Delivery, Lease, ReadyBuffers
from ojs_amqp.engine.events import EventLog
from ojs_amqp.engine.workers import WorkerRegistry
from ojs_amqp.errors import (
    BackendUnavailable,
    Conflict,
    Duplicate,
    InvalidRequest,
    NotFound,
    OjsError,
    QueueFull,
    QueueNotEmpty,
)
from ojs_amqp.metrics import Metrics
from ojs_amqp.settings import Settings
from ojs_amqp.store.base import JobStore
from ojs_amqp.tracing import JobTracing

log = logging.getLogger("ojs_amqp.engine")

FETCH_MAX_COUNT = 100
#: How long a test-mode reset waits for its queue deletes; the rest go on in the background
#: (a queue still being deleted is declared again only once its delete is done), so the reset
#: answers within this bound however many queues it deletes.
RESET_DELETE_BUDGET_S = 5.0
#: How long deleting a queue waits for moves of its jobs already under way to be recorded.
DELETE_DRAIN_S = 10.0
#: How long a FETCH that opens a queue's gateway waits for the queue's waiting jobs.
GATEWAY_FILL_S = 0.5
#: How soon a lease expiry or a due timer that could not be published (broker away, queue
#: full) is tried again.
LEASE_RETRY_S = 1.0
TIMER_RETRY_MS = 1000
#: Buffered deliveries renewed at once by the hold refresh (concurrent publishes).
RENEW_BATCH = 100
#: How long closing a gateway waits for deliveries still being handled before it closes
#: their channel (anything left unacked then goes back to the queue, counted once).
GATEWAY_DRAIN_S = 2.0
_DIRECTIVES = ("running", "quiet", "terminate")
#: How often reported progress is written to the store, and the least time between two
#: progress events of one job (ojs-progress §6.2: the latest value is kept, not each one).
PROGRESS_FLUSH_S = 1.0


class JobEngine:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        broker: Broker,
        events: EventLog,
        metrics: Metrics,
        *,
        clock: Callable[[], int] = now_ms,
        rng: Callable[[], float] = random.random,
        tracing: JobTracing | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.events = events
        self.metrics = metrics
        self._now = clock
        self._rng = rng
        #: OpenTelemetry spans; None when opentelemetry is absent or disabled, so each hook
        #: below costs one attribute check.
        self.tracing = tracing
        self._ids = UUIDv7Generator()
        self._depths = DepthCache(store)
        #: Depth bounds set at run time (admin API), by queue: (max_depth, warning fraction);
        #: they take precedence over settings.max_depth.
        self.depth_bounds: dict[str, tuple[int, float]] = {}
        self._buffers = ReadyBuffers()
        self._leases: dict[str, Lease] = {}
        self._arrivals = Arrivals()
        self._queues_ready: set[str] = set()
        #: Queues being deleted from the broker: a use of one waits for its delete first.
        self._deleting: dict[str, asyncio.Future[None]] = {}
        #: Job queues the daemon consumes for HTTP workers, and when one was last fetched
        #: from. Consuming only while HTTP workers ask leaves the queue to native workers.
        self._gateways: dict[str, float] = {}
        #: Gateways being closed (their consumer cancelled, their buffer being renewed),
        #: and deliveries being handled per gateway queue (a close waits for them).
        self._closing: set[str] = set()
        self._handling: dict[str, int] = {}
        self._held: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._worker_directives: dict[str, str] = {}
        #: HTTP workers' announced states (beat, drain), for fetch and worker health.
        self.workers = WorkerRegistry()
        #: Progress of active jobs reported since the last store write (job id -> progress,
        #: core/progress.py): reads see it at once, the store gets the latest once a second.
        self._progress: dict[str, dict[str, Any]] = {}
        #: job id -> monotonic time of its last progress event; and the jobs whose latest
        #: progress is still to be announced (held back by the one-per-second limit).
        self._progress_announced: dict[str, float] = {}
        self._progress_unannounced: set[str] = set()
        #: job id -> copy number being published and recorded right now, and deliveries of
        #: that copy that arrived before the record (re-run once it is written).
        self._recording: dict[str, int] = {}
        self._deferred: dict[str, list[Coroutine[Any, Any, None]]] = {}
        self._unpublished: list[str] = []
        self._background: list[asyncio.Task[None]] = []
        #: Called after a test-mode reset, to re-register what the reset tore down.
        self.on_reset: list[Callable[[], Awaitable[None]]] = []
        #: Called once per job queue when the daemon first declares it (the native edge
        #: starts consuming its control queue).
        self.on_new_queue: list[Callable[[str], Awaitable[None]]] = []
        broker.on_connection_lost.append(self._forget_deliveries)
        broker.on_reconnected.append(self._after_reconnect)
        broker.on_consumer_restored.append(self._republish_lost)
        broker.on_consumer_lost.append(self._forget_channel_deliveries)

    def settle(self, message: Inbound | None) -> None:
        """Ack a delivery; if its channel is gone the broker redelivers it, and the stale-copy
        check on delivery drops it then."""
        if message is not None and not message.settled:
            message.ack()
            self.metrics.acked()

    # --- start / stop ----------------------------------------------------------------------

    async def start(self) -> None:
        t = self.broker.topology
        await self.broker.consume(t.due_queue, t.due_queue_arguments(), 2000, self._on_due)
        for info in await self.store.queues():
            await self._ensure_queue(info.name)
        await self._replay_outbox()
        self._background = [
            asyncio.create_task(self._every(1.0, self._expire_due), name="expiry-sweeper"),
            asyncio.create_task(self._every(self._prune_period_s, self._prune), name="retention"),
            asyncio.create_task(self._every(0.05, self._flush_published), name="outbox-flush"),
            asyncio.create_task(
                self._every(PROGRESS_FLUSH_S, self._flush_progress), name="progress-flush"
            ),
            asyncio.create_task(self._every(5.0, self._close_idle_gateways), name="gateways"),
            asyncio.create_task(
                self._every(self._hold_check_s, self._refresh_held_deliveries), name="holds"
            ),
        ]

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._flush_published()
        await self._flush_progress()
        self._cancel_timers()
        if self.tracing is not None:
            self.tracing.close()

    async def _every(self, seconds: float, work: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except OjsError as exc:
                log.warning("%s failed: %s", getattr(work, "__name__", work), exc.message)
            except Exception:
                log.exception("%s failed", getattr(work, "__name__", work))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, OjsError):
                log.warning("background step failed: %s", exc.message)
            else:
                log.error("background step failed", exc_info=exc)

    # --- queues ----------------------------------------------------------------------------

    async def ensure_queue(self, queue: str) -> None:
        """Declare a queue a client announced (native `hello`)."""
        validate_queue(queue)
        await self._ensure_queue(queue)

    async def _ensure_queue(self, queue: str) -> bool:
        """Declare the queue on its first use; True if that first waited for its delete."""
        if queue in self._queues_ready:
            return False
        waited = False
        while (deleting := self._deleting.get(queue)) is not None:
            await asyncio.wait([deleting])  # whatever its outcome, declared afresh below
            waited = True
        t = self.broker.topology
        await self.broker.ensure_job_queue(queue)

        async def on_dead(message: Inbound) -> None:
            await self._on_dead_letter(message)

        await self.broker.consume(
            t.dead_letter_queue(queue), t.dead_letter_queue_arguments(), 100, on_dead
        )
        await self.store.add_queue(queue, self._now())
        self._queues_ready.add(queue)
        for hook in self.on_new_queue:
            await hook(queue)
        return waited

    async def _open_gateway(self, queue: str) -> None:
        """Consume the job queue for HTTP workers (DESIGN §5), from the first FETCH on."""
        self._gateways[queue] = time.monotonic()
        t = self.broker.topology
        if self.broker.consuming(t.job_queue(queue)):
            return

        async def on_job(message: Inbound) -> None:
            self._handling[queue] = self._handling.get(queue, 0) + 1
            try:
                await self._on_job_delivery(queue, message)
            finally:
                self._handling[queue] -= 1

        waiting = await self.broker.ready_count(t.job_queue(queue))
        await self.broker.consume(
            t.job_queue(queue), t.job_queue_arguments(queue), self.settings.prefetch, on_job
        )
        await self._fill(queue, min(waiting, self.settings.prefetch))

    async def _fill(self, queue: str, expected: int) -> None:
        """Let the first prefetch burst of a newly consumed queue arrive (briefly), so its
        first FETCH hands out the highest priority waiting, not whatever landed first."""
        deadline = time.monotonic() + GATEWAY_FILL_S
        while self._buffers.sizes().get(queue, 0) < expected and time.monotonic() < deadline:
            await self._arrivals.wait([queue], min(deadline, time.monotonic() + 0.01))

    @property
    def _prune_period_s(self) -> float:
        """Retention runs once a minute, or more often when a retention is that short."""
        s = self.settings
        shortest_ms = min(s.retention_completed_ms, s.retention_discarded_ms,
                          s.dead_letter_max_age_ms)  # fmt: skip
        return max(1.0, min(60.0, shortest_ms / 4000))

    @property
    def _hold_check_s(self) -> float:
        return min(60.0, max(0.2, self.settings.delivery_hold_ms / 4000))

    async def _refresh_held_deliveries(self) -> None:
        """Buffered deliveries older than `delivery_hold_ms` are renewed (`_renew`) before
        the broker's consumer_timeout closes the channel over them. The fresh copies come
        straight back to this consumer and keep their place in line here (FETCH waits for
        them briefly); behind a backlog larger than the prefetch they queue up behind it."""
        cutoff = time.monotonic() - self.settings.delivery_hold_ms / 1000
        held = self._buffers.take_older_than(cutoff)
        for start in range(0, len(held), RENEW_BATCH):
            batch = held[start : start + RENEW_BATCH]
            done = await asyncio.gather(
                *(self._renew(d, "hold") for d in batch), return_exceptions=True
            )
            for delivery, renewed in zip(batch, done, strict=True):
                if renewed is not True:  # not published: keep holding it, tried next round
                    if isinstance(renewed, BaseException):
                        log.error("renewing job %s failed", delivery.job_id, exc_info=renewed)
                    if delivery.queue in self._gateways and not delivery.message.void:
                        self._buffers.add(delivery)

    async def _renew(self, delivery: Delivery, reason: str) -> bool:
        """Replace a buffered delivery by a fresh copy of its job instead of returning it to
        its queue: publish the next copy, record it, ack this one. A quorum queue counts
        every return (reject or nack with requeue, a closed channel, a lost connection)
        against its delivery limit (20 by default on RabbitMQ 4.x) and dead-letters the
        message past it, though no worker ever ran the job. False when the copy could not
        be published (the delivery is still held)."""
        job = await self.store.get(delivery.job_id)
        if job is None or job.copy != delivery.job.copy or job.state is not JobState.AVAILABLE:
            self.settle(delivery.message)  # the job moved on meanwhile: this copy is stale
            return True
        try:
            written = await self._advance(replace(job, copy=job.copy + 1), delivery.message,
                                          job.copy)  # fmt: skip
        except OjsError as exc:
            log.warning("could not renew the delivery of job %s (%s)", job.id, exc.message)
            return False
        if written:
            self.metrics.renewed(reason)
        else:
            self.settle(delivery.message)
        return True

    async def _close_idle_gateways(self) -> None:
        """Stop consuming queues no HTTP worker fetched from lately and none holds a lease
        on; their buffered jobs go back to the queue, to whichever worker comes."""
        cutoff = time.monotonic() - self.settings.gateway_idle_ms / 1000
        leased = {lease.job.queue for lease in self._leases.values() if lease.message}
        for queue, last_fetch in list(self._gateways.items()):
            if last_fetch < cutoff and queue not in leased:
                del self._gateways[queue]
                await self._close_gateway(queue)

    async def _close_gateway(self, queue: str) -> None:
        """Close a gateway without returning its buffer to the broker (each return would
        count against the queue's delivery limit): cancel the consumer (nothing more comes),
        renew what it holds, in the order FETCH would have handed it out, then close the
        channel with nothing unacked. Copies not renewed (broker away) return with it."""
        name = self.broker.topology.job_queue(queue)
        self._closing.add(queue)
        try:
            await self.broker.cancel_consumer(name)
            for delivery in self._buffers.take_queue(queue):
                if not delivery.message.void:
                    await self._renew(delivery, "gateway_close")
            deadline = time.monotonic() + GATEWAY_DRAIN_S
            # Deliveries read before the cancel took effect: polled (bounded) rather than an
            # event that every delivery would have to touch.
            while self._handling.get(queue, 0) > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        finally:
            self._closing.discard(queue)
        await self.broker.stop_consumer(name)
        self._buffers.drop_queue(queue)
        if queue in self._gateways:  # a FETCH came meanwhile: consume again, for it
            try:
                await self._open_gateway(queue)
            except Exception:
                self._gateways.pop(queue, None)  # the next FETCH opens it
                raise

    # --- publishing copies -----------------------------------------------------------------

    async def _publish_copy(self, job: Job) -> None:
        """Publish the broker copy that represents the job's (new) state, if it has one."""
        t = self.broker.topology
        state = job.state
        if state is JobState.AVAILABLE:
            await self._outlived_its_queue(job)
            if job.queue in self._gateways:
                self._buffers.expect(job)
            await self.broker.publish(t.direct_exchange, job.queue, codec.encode(job))
        elif state is JobState.SCHEDULED:
            await self._park(job, job.scheduled_at_ms or self._now())
        elif state is JobState.RETRYABLE:
            await self._park(job, job.next_attempt_at_ms or self._now())
        elif state is JobState.DISCARDED:
            await self._outlived_its_queue(job)
            await self.broker.publish(t.dlx_exchange, job.queue, codec.encode(job))

    async def _outlived_its_queue(self, job: Job) -> None:
        """Declare the job's queue if needed. A move that had to wait for the queue's delete
        may be about a job deleted with it: published, it would come back as a new job."""
        if await self._ensure_queue(job.queue) and await self.store.get(job.id) is None:
            raise Conflict(
                f"queue {job.queue!r} was deleted, with job {job.id}, while the job was "
                "being moved or pushed; it was not enqueued",
                details={"queue": job.queue, "job_id": job.id},
            )

    async def _park(self, job: Job, due_at_ms: int) -> None:
        """Put a waiting job on the delay ladder (or straight into the due queue)."""
        level = ladder_level_for(due_at_ms - self._now())
        key = DUE_ROUTING_KEY if level is None else ladder_routing_key(level)
        message = codec.encode(job, due_at_ms=due_at_ms)
        await self.broker.publish(self.broker.topology.delay_exchange, key, message)

    async def _advance(
        self,
        new: Job,
        current: Inbound | None,
        expect_copy: int,
        expect_state: JobState | None = None,
    ) -> bool:
        """The one move rule: publish the next copy, record it, then ack the current copy.

        Between the publish and the record, the new copy can already be delivered back to
        us; such a delivery waits (see `_wait_for_record`) instead of being judged against
        the old row.
        """
        self._recording[new.id] = new.copy
        try:
            await self._publish_copy(new)
            written = await self.store.update(
                new, expect_copy=expect_copy, expect_state=expect_state
            )
        finally:
            # (two moves of one job may overlap, e.g. a timer redelivered after a reconnect
            # while its first delivery is still firing: the first to finish removes the mark)
            self._recording.pop(new.id, None)
            for redo in self._deferred.pop(new.id, []):
                self._spawn(redo)
        if written:
            self.settle(current)
        return written

    def _wait_for_record(self, ref: codec.CopyRef, redo: Coroutine[Any, Any, None]) -> bool:
        """Defer a delivery of a copy whose move is still being recorded; True if deferred."""
        if ref.job_id is None or ref.copy is None or self._recording.get(ref.job_id) != ref.copy:
            redo.close()
            return False
        self._deferred.setdefault(ref.job_id, []).append(redo)
        return True

    # --- push / activate / cancel / info ---------------------------------------------------

    async def push(self, body: Any) -> Job:
        now = self._now()
        job = parse_enqueue(body, now_ms=now, new_id=self._ids.new(now))
        await self._admit(job.queue)
        traced = self.tracing.start_enqueue(job) if self.tracing is not None else None
        needs_publish = job.state is not JobState.PENDING
        await self.store.insert(job, published=not needs_publish)
        if needs_publish:
            try:
                await self._publish_copy(job)
            except OjsError as exc:
                # Not accepted, and the producer is told (503 / 429). Had the message reached
                # its queue after all, its delivery is adopted like any binding push.
                await self.store.delete(job.id)
                if traced is not None:
                    traced.end(exc)
                raise
            self._unpublished.append(job.id)
        self._depths.pushed(job.queue)
        self.metrics.enqueued(job)
        if traced is not None:
            traced.end()
        self.events.emit("job.enqueued", job, now)
        if job.state is JobState.SCHEDULED:
            self.events.emit("job.scheduled", job, now)
        return job

    async def _admit(self, queue: str) -> None:
        """Backpressure (max_depth): refuse a push to a queue holding its bound of open jobs."""
        bound = self.depth_bound(queue)[0]
        if bound <= 0:
            return
        depth = await self._depths.depth(queue)
        if depth >= bound:
            raise QueueFull(
                f"queue {queue!r} holds {depth} open jobs, its bound is {bound}",
                details={"queue": queue, "depth": depth, "max_depth": bound},
                headers={"X-OJS-Queue-Depth": str(depth), "X-OJS-Queue-Bound": str(bound)},
            )

    def depth_bound(self, queue: str) -> tuple[int, float]:
        """(max_depth, warning threshold) of `queue`: set at run time, else by settings."""
        return self.depth_bounds.get(queue) or (self.settings.max_depth_for(queue), 0.8)

    async def pressure_headers(self, queue: str) -> list[tuple[str, str]]:
        """ojs-backpressure §7.3: on a push to a bounded queue past its warning threshold,
        its depth, bound and pressure (depth / bound); none otherwise."""
        bound, warning = self.depth_bound(queue)
        if bound <= 0:
            return []
        depth = await self._depths.depth(queue)
        if depth < warning * bound:
            return []
        return [("X-OJS-Queue-Depth", str(depth)), ("X-OJS-Queue-Bound", str(bound)),
                ("X-OJS-Queue-Pressure", f"{min(1.0, depth / bound):.2f}")]  # fmt: skip

    async def queue_depth(self, queue: str) -> int:
        """Open (non-terminal) jobs of `queue`, as backpressure counts them."""
        return await self._depths.depth(queue)

    async def validate_job(self, body: Any) -> None:
        """Check an envelope as push would, without enqueuing anything."""
        now = self._now()
        parse_enqueue(body, now_ms=now, new_id=self._ids.new(now))

    async def _flush_published(self) -> None:
        ids, self._unpublished = self._unpublished, []
        await self.store.mark_published(ids)

    async def _replay_outbox(self) -> None:
        """Publish rows whose copy was never confirmed (the daemon died mid-push)."""
        while batch := await self.store.unpublished(500):
            for job in batch:
                await self._publish_copy(job)
            await self.store.mark_published([j.id for j in batch])
            log.info("replayed %d unpublished jobs from the outbox", len(batch))

    async def get(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is None:
            raise NotFound(
                f"job {job_id} not found", details={"resource_type": "job", "resource_id": job_id}
            )
        return self._with_progress(job)

    async def activate(self, job_id: str) -> Job:
        job = await self.get(job_id)
        new = lifecycle.activate(job, self._now())
        await self._advance(new, None, job.copy)
        return new

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job.state.terminal:
            raise Conflict(
                f"job {job_id} is already {job.state.value}; a finished job cannot be cancelled",
                details={"job_id": job_id, "current_state": job.state.value},
            )
        now = self._now()
        new = lifecycle.cancel(job, now)
        if not await self.store.update(new, expect_copy=job.copy):
            raise Conflict(f"job {job_id} changed while being cancelled; retry")
        lease = self._leases.pop(job_id, None)
        if lease is not None:
            self._stop_lease_timer(lease)
            self.settle(lease.message)
        buffered = self._buffers.remove(job_id)
        if buffered is not None:
            self.settle(buffered.message)
        elif lease is None and job.state in (JobState.AVAILABLE, JobState.ACTIVE):
            await self._tell_native_workers(new)
        if self.tracing is not None:
            self.tracing.finished(job, new, "cancelled")
        self.events.emit("job.cancelled", new, now)
        return new

    async def _tell_native_workers(self, job: Job) -> None:
        """A native worker may hold the job or receive it later: broadcast the cancel. The
        cancel is already recorded, so a lost broadcast only means the job runs and its
        report is ignored."""
        t = self.broker.topology
        body = orjson.dumps({"job_id": job.id, "queue": job.queue})
        props = Basic.Properties(
            content_type="application/json", message_type=protocol.CANCEL, delivery_mode=1
        )
        key = protocol.WORKER_CANCEL_PREFIX + job.queue
        try:
            await self.broker.publish_nowait(t.workers_exchange, key, codec.Outgoing(body, props))
        except BackendUnavailable as exc:
            log.warning("could not tell native workers that %s is cancelled: %s", job.id, exc)

    # --- deliveries ------------------------------------------------------------------------

    async def _on_job_delivery(self, queue: str, message: Inbound) -> None:
        ref = codec.read_ref(message.headers, message.message_id)
        if self._wait_for_record(ref, self._on_job_delivery(queue, message)):
            return
        job = None
        if ref.job_id:
            # A job we just published is taken as we published it; if it was cancelled or
            # moved meanwhile, the compare-and-set at lease time drops it.
            job = self._buffers.take_expected(queue, ref.job_id)
            if job is None or job.copy != ref.copy:
                job = await self.store.get(ref.job_id)
        if job is None:
            job = await self._adopt(queue, message)
            if job is None:
                return
        elif ref.copy is not None and ref.copy != job.copy:
            self.settle(message)  # a stale duplicate of an older state
            return
        if job.state is JobState.ACTIVE:
            await self._recover_active(job, message)
            return
        if job.state is not JobState.AVAILABLE:
            self.settle(message)
            return
        if (queue not in self._gateways and queue not in self._closing) or message.void:
            return  # arrived while the gateway closed: its channel is gone, the broker has it
        if queue in self._closing or codec.delivery_count(message.headers) > 0:
            # Arrived while the gateway closes, or returned by the broker (a lost connection,
            # a restart, a crashed worker): a fresh copy, so returns never add up to the
            # queue's delivery limit; the copy is buffered when it comes back.
            why = "gateway_close" if queue in self._closing else "redelivered"
            if not await self._renew(Delivery(job, queue, message), why):
                await self._buffer(queue, job, message)
            return
        await self._buffer(queue, job, message)

    async def _buffer(self, queue: str, job: Job, message: Inbound) -> None:
        if queue not in self._gateways:
            return  # arrived while the gateway closed: its channel is gone, the broker has it
        duplicate = self._buffers.remove(job.id)
        if duplicate is not None:  # two copies of one job: keep the newest, release the other
            self.settle(duplicate.message)
        self._buffers.add(Delivery(job, queue, message))
        self._arrivals.arrived(queue)

    async def _recover_active(self, job: Job, message: Inbound) -> None:
        lease = self._leases.get(job.id)
        if lease is not None:
            # Redelivered after a reconnect: the worker still holds it. Re-arm: a deadline
            # that passed while the broker was away fires now.
            lease.message, lease.held_since = message, time.monotonic()
            if codec.delivery_count(message.headers) > 0:
                # Returned by the broker: hand it over now (a lease timer on the ladder, this
                # delivery acked), so a lease outliving many reconnects is never
                # dead-lettered at the queue's delivery limit under its worker.
                await self._hand_over(job.id)
                return
            self._arm(lease)
            return
        # The daemon restarted while a worker held the job: the lease is gone.
        await self._lost_lease_expired(job, message)

    async def _lost_lease_expired(self, job: Job, message: Inbound) -> None:
        """A lease that no daemon holds any more (a restart, a dead daemon's lease timer) is a
        visibility timeout, with the same rule: discarded once its attempts are spent."""
        now = self._now()
        new = lifecycle.lease_expired(job, now, "visibility", self._rng)
        if await self._advance(new, message, job.copy):
            self.metrics.lease_expired(job, "visibility")
            if self.tracing is not None:
                self.tracing.finished(job, new, "lease_expired")
            self._after_failure_events(new, now)

    async def _adopt(self, queue: str, message: Inbound) -> Job | None:
        """A job another AMQP client published by binding PUSH: into the store it goes."""
        try:
            return await self._adopt_envelope(orjson.loads(message.body), message.message_id, queue)
        except (orjson.JSONDecodeError, OjsError) as exc:
            log.warning("rejecting an invalid message on queue %s: %s", queue, exc)
            message.reject(requeue=False)
            return None

    async def _adopt_envelope(self, body: Any, job_id: str | None, queue: str | None) -> Job:
        """Store a job that reached a job queue without us, as available."""
        job = self._envelope_job(body, job_id, queue)
        self._announce_adopted(job)  # before the insert: tracing may add meta.traceparent
        try:
            await self.store.insert(job, published=True)
        except Duplicate:  # adopted meanwhile by another delivery or report
            return await self.get(job.id)
        return job

    def _envelope_job(self, body: Any, job_id: str | None, queue: str | None) -> Job:
        """Validate an envelope that reached a job queue without us: the job, available.

        Lenient where only the store cares: a third-party id need not be a UUIDv7, just
        unique; system fields the sender copied in are ignored.
        """
        if not isinstance(body, dict):
            raise InvalidRequest("a job message body must be a JSON object (the OJS envelope)")
        job_id = job_id or (body["id"] if isinstance(body.get("id"), str) else None)
        fields = {k: v for k, v in body.items() if k != "id" and k not in SYSTEM_FIELDS}
        if job_id is not None and is_uuidv7(job_id):
            fields["id"] = job_id
        now = self._now()
        job = parse_enqueue(fields, now_ms=now, new_id=self._ids.new(now))
        if job_id is not None and not 0 < len(job_id) <= 255:
            raise InvalidRequest("a job id must be 1 to 255 characters", details={"field": "id"})
        created = _past_time(body.get("created_at"), now)
        return replace(
            job, id=job_id or job.id, queue=queue or job.queue, state=JobState.AVAILABLE,
            created_at_ms=created, enqueued_at_ms=created, scheduled_at_ms=None,
        )  # fmt: skip

    def _announce_adopted(self, adopted: Job) -> None:
        if self.tracing is not None:
            self.tracing.start_enqueue(adopted, "adopt").end()
        self.metrics.enqueued(adopted)
        self.events.emit("job.enqueued", adopted, adopted.enqueued_at_ms or self._now())

    async def _on_dead_letter(self, message: Inbound) -> None:
        """Archive what reached ojs.queue.dlx.{q}.

        Our own discards carry the *next* copy number and are recorded by the move that
        published them (possibly still awaiting its confirm), so they are only acked here. A
        copy whose number matches an available or active job's is a worker's
        Basic.Nack(requeue=false) (AMQP-009); a job never seen before is adopted first.
        """
        try:
            ref = codec.read_ref(message.headers, message.message_id)
            if (message.headers or {}).get(codec.H_STATE) == JobState.DISCARDED.value:
                # Ours, never a worker's: recorded by its move, or left by a crash before the
                # record, when a later move may reuse its copy number (a renewal, a lease
                # lost with the daemon) and the copy check alone would not tell.
                self.settle(message)
                return
            job = await self.store.get(ref.job_id) if ref.job_id else None
            if job is None and ref.job_id:
                body = orjson.loads(message.body)
                job = await self._adopt_envelope(body, ref.job_id, message.routing_key)
            if job is not None and codec.death_reason(message.headers) == codec.DELIVERY_LIMIT:
                await self._worker_rejected(job, ref.copy, codec.DELIVERY_LIMIT,
                                            _delivery_limit_message(message.headers))  # fmt: skip
            elif job is not None:
                await self._worker_rejected(job, ref.copy)
        except (OjsError, orjson.JSONDecodeError) as exc:
            log.warning("could not archive a dead letter: %s", exc)
        self.settle(message)

    async def _worker_rejected(
        self, job: Job, copy: int | None, code: str = "rejected", reason: str = ""
    ) -> None:
        """A worker's Basic.Nack(requeue=false), or (code `delivery_limit`) the broker
        dead-lettered the job because its workers returned it past the queue's delivery
        limit: a native worker that dies on the job, typically. The daemon's own returns
        never get there (`_renew`)."""
        if copy is not None and copy != job.copy:
            return
        leased = job.id in self._leases
        active = job if leased else self._native_start(job, copy, self._now(), None)
        if active is None or active.state is not JobState.ACTIVE:
            return
        new = lifecycle.worker_discard(active, self._now(), reason or "rejected by a worker", code)
        if await self.store.update(new, expect_copy=job.copy):
            self._drop_lease(job.id)
            self.metrics.discarded(new)
            if code == codec.DELIVERY_LIMIT:
                self.metrics.delivery_limit_reached(new)
                log.warning("job %s (queue %s) was dead-lettered by the broker: %s",
                            job.id, job.queue, new.error and new.error.get("message"))  # fmt: skip
            if self.tracing is not None:
                self.tracing.finished(active, new, "discarded")
            self.events.emit("job.discarded", new, self._now())

    def _forget_deliveries(self) -> None:
        """The consume connection is gone: every delivery tag we hold is void."""
        self._buffers.clear()
        for lease in self._leases.values():
            lease.message = None
        self._cancel_timers(leases=False)

    def _forget_channel_deliveries(self, queue_name: str) -> None:
        """The broker closed one consumer's channel: what it delivered is void and will be
        delivered again. Buffered jobs of that queue are dropped (their redelivery buffers
        them again), held timers are let go (they are held again); a lease keeps its job and
        takes the redelivered message when it comes (`_recover_active`)."""
        t = self.broker.topology
        if queue_name == t.due_queue:
            self._cancel_timers(leases=False)
            return
        queue = next((q for q in self._gateways if t.job_queue(q) == queue_name), None)
        if queue is not None:
            self._buffers.drop_queue(queue)
            for lease in self._leases.values():
                if lease.job.queue == queue:
                    lease.message, lease.held_since = None, None

    async def _republish_lost(self, queue_name: str) -> None:
        """The broker cancelled our consumer of a job queue (it was deleted) and it exists
        again, empty: the store is the authority, so every job it shows available there
        gets a new copy. Copies that survived somewhere are stale by their copy number."""
        t = self.broker.topology
        queue = next((q for q in self._queues_ready if t.job_queue(q) == queue_name), None)
        if queue is None:
            return
        jobs = await self.store.available(queue)
        for job in jobs:
            # A job leased since the read keeps its copy number: only its state tells.
            new = replace(job, copy=job.copy + 1)
            await self._advance(new, None, job.copy, JobState.AVAILABLE)
        log.warning("queue %s was lost on the broker: republished %d available jobs from the "
                    "store", queue_name, len(jobs))  # fmt: skip

    async def _after_reconnect(self) -> None:
        await self._replay_outbox()

    # --- native AMQP workers (docs/amqp-protocol.md) ----------------------------------------

    async def _known_or_adopted(
        self, job_id: str, envelope: dict[str, Any] | None, queue: str | None
    ) -> Job:
        job = await self.store.get(job_id)
        if job is not None:
            return job
        if envelope is None:
            raise NotFound(
                f"job {job_id} not found, and the message carries no envelope to adopt it from",
                details={"resource_type": "job", "resource_id": job_id},
            )
        return await self._adopt_envelope(envelope, job_id, queue)

    def _native_start(
        self, job: Job, copy: int | None, started_at_ms: int, worker_id: str | None
    ) -> Job | None:
        """The job as active under a native worker, or None when a report on it is stale
        (about an older copy, finished, cancelled, waiting on a timer, or leased to an HTTP
        worker). `copy` is the one the worker was delivered (None: not known)."""
        if copy is not None and copy != job.copy:
            return None
        if job.state is JobState.AVAILABLE and job.id not in self._leases:
            active = lifecycle.fetch(job, started_at_ms, worker_id)
            queued_ms = started_at_ms - (job.enqueued_at_ms or job.created_at_ms)
            self.metrics.started(active, max(0, queued_ms) / 1000)
            self.events.emit("job.started", active, started_at_ms)
            return active
        if job.state is JobState.ACTIVE and job.id not in self._leases:
            return job
        return None

    async def apply_report(self, report: ControlMessage, queue: str | None) -> Job | None:
        """A native worker's outcome. Returns None for a stale report (already finished or
        cancelled, or about an older copy: a duplicate execution), which changes nothing."""
        assert report.job_id is not None
        self.workers.seen_on(report.worker_id, self._now(), [queue] if queue else [], "native")
        self.workers.holds(report.worker_id, report.job_id, done=True)
        job = await self.store.get(report.job_id)
        adopted = None
        if job is None and report.envelope is not None and report.kind == protocol.COMPLETED:
            # Never seen (binding PUSH) and already done: adopt and complete in one write
            # (announced first, so its events keep their order).
            job = adopted = self._envelope_job(report.envelope, report.job_id, queue)
            self._announce_adopted(adopted)
        elif job is None:
            job = await self._known_or_adopted(report.job_id, report.envelope, queue)
        job = self._with_progress(job)
        now = self._now()
        active = self._native_start(job, report.copy, report.started_at_ms or now, report.worker_id)
        if active is None:
            self.metrics.report(report.kind, "stale")
            return None
        if report.kind == protocol.COMPLETED:
            new = lifecycle.ack(active, now, report.result)
            if adopted is None:
                written = await self.store.update(new, expect_copy=job.copy)
            else:
                try:
                    await self.store.insert(new, published=True)
                    written = True
                except Duplicate:  # adopted meanwhile (a heartbeat, a delivery): start over
                    return await self.apply_report(report, queue)
            if written:
                duration = now - (active.started_at_ms or now)
                self.metrics.completed(new, duration / 1000)
                self.events.emit("job.completed", new, now, duration_ms=duration)
                if self.tracing is not None:
                    self.tracing.finished(active, new, "completed")
        else:
            assert report.failure is not None
            if report.attempt is not None and active.attempt < report.attempt:
                # The worker counted attempts the daemon never saw: deliveries of this copy
                # that went back to the queue with a worker that died (x-delivery-count).
                active = replace(active, attempt=min(report.attempt, MAX_ATTEMPTS_LIMIT))
            new = lifecycle.fail(active, now, report.failure, self._rng)
            written = await self._advance(new, None, job.copy)
            if written:
                self._after_failure_events(new, now)
                if self.tracing is not None:
                    self.tracing.finished(active, new, "failed")
        self.metrics.report(report.kind, "applied" if written else "stale")
        return new if written else None

    async def native_heartbeat(self, beat: ControlMessage, queue: str | None) -> Job:
        """The first heartbeat of a native worker marks the job active, held by that worker
        (adopting a job pushed by binding PUSH if the beat carries its envelope)."""
        assert beat.job_id is not None
        job = await self._known_or_adopted(beat.job_id, beat.envelope, queue)
        now = self._now()
        self.workers.seen_on(beat.worker_id, now, [job.queue], kind="native")
        self.workers.holds(beat.worker_id, job.id, done=False)
        if beat.started and beat.copy == job.copy and job.id not in self._leases:
            return await self._native_restart(job, beat, now)
        if job.state is JobState.AVAILABLE:
            active = self._native_start(job, beat.copy, now, beat.worker_id)
            if active is not None and await self.store.update(active, expect_copy=job.copy):
                job = active
                if self.tracing is not None:
                    self.tracing.started(active)
        if job.state is JobState.ACTIVE:
            self.events.emit("job.heartbeat", job, now, worker_id=beat.worker_id)
        return job

    async def _native_restart(self, job: Job, beat: ControlMessage, now: int) -> Job:
        """A native worker is about to run a copy that went back to its queue unfinished
        (`x-delivery-count` >= 1), and asks first: the answer is the job as it then stands,
        and the worker runs it only if it is active. A previous start of this copy that never
        reported died with its worker: a failed attempt (ojs-retry §9.2), so a job that kills
        every worker ends per `on_exhaustion` instead of looping. A copy never started here
        before may still have run unannounced once (a first delivery does not ask): that is
        counted too, but never so as to discard a job that may not have run."""
        if job.state is JobState.AVAILABLE:
            active = self._native_start(job, beat.copy, now, beat.worker_id)
            if active is None:
                return job
            charged = active.attempt < job.retry.max_attempts
            if charged:
                active = lifecycle.worker_lost(active, now, beat.worker_id, beat.delivery_count)
            if await self.store.update(active, expect_copy=job.copy):
                if charged:
                    self.metrics.lease_expired(job, "worker_lost")
                if self.tracing is not None:
                    self.tracing.started(active)
                return active
            return await self.get(job.id)
        if job.state is not JobState.ACTIVE:
            return job
        new = lifecycle.worker_lost(job, now, beat.worker_id, beat.delivery_count)
        if new.state is JobState.ACTIVE:
            written = await self.store.update(new, expect_copy=job.copy)
        else:
            written = await self._advance(new, None, job.copy)
        if not written:
            return await self.get(job.id)
        self.metrics.lease_expired(job, "worker_lost")
        self._after_failure_events(new, now)
        if self.tracing is not None and new.state is not JobState.ACTIVE:
            self.tracing.finished(job, new, "failed")
        return new

    async def binding_retry(
        self, ref: codec.CopyRef, body: Any, queue: str, delay_ms: int, report: FailureReport
    ) -> Job | None:
        """A worker following the binding republished a failed job to ojs.exchange.retry:
        park it for `delay_ms` (the policy still decides whether attempts are left)."""
        job_id = ref.job_id or (body.get("id") if isinstance(body, dict) else None)
        if not isinstance(job_id, str):
            raise InvalidRequest("the message names no job: set message_id to the job id")
        job = await self._known_or_adopted(job_id, body, queue)
        now = self._now()
        active = self._native_start(job, ref.copy, now, None)
        if active is None:
            return None
        new = lifecycle.fail_with_delay(active, now, report, delay_ms, self._rng)
        if not await self._advance(new, None, job.copy):
            return None
        self._after_failure_events(new, now)
        if self.tracing is not None:
            self.tracing.finished(active, new, "failed")
        return new

    # --- fetch / ack / nack / heartbeat ----------------------------------------------------

    async def fetch(
        self, queues: list[str], count: int, worker_id: str | None, visibility_ms: int | None
    ) -> list[Job]:
        if not queues:
            raise InvalidRequest("queues must list at least one queue")
        self.workers.seen_on(worker_id, self._now(), queues)
        if not self.workers.fetching(worker_id):
            return []  # quiet or draining: no new jobs (ojs-graceful-shutdown §5.1)
        now_mono = time.monotonic()
        for queue in queues:
            if queue in self._gateways:  # consumed already: the usual case
                self._gateways[queue] = now_mono
                continue
            validate_queue(queue)
            await self._ensure_queue(queue)
            await self._open_gateway(queue)
        count = max(1, min(count, FETCH_MAX_COUNT))
        deadline = now_mono + self.settings.fetch_wait_ms / 1000
        jobs: list[Job] = []
        while True:
            settle_until = time.monotonic() + 0.25
            while self._buffers.awaiting(queues) and time.monotonic() < settle_until:
                await self._arrivals.wait(queues, settle_until)
            for queue in queues:
                while len(jobs) < count:
                    delivery = self._buffers.pop(queue)
                    if delivery is None:
                        break
                    job = await self._lease(delivery, worker_id, visibility_ms)
                    if job is not None:
                        jobs.append(job)
            if jobs or time.monotonic() >= deadline:
                return jobs
            await self._arrivals.wait(queues, deadline)

    async def _lease(
        self, d: Delivery, worker_id: str | None, visibility_ms: int | None
    ) -> Job | None:
        """Hand a buffered job to a worker. The store write is a compare-and-set on the copy
        number, so a job cancelled or moved since it was buffered is dropped, not leased."""
        job = d.job
        now = self._now()
        if job.expires_at_ms is not None and job.expires_at_ms <= now:
            await self._expire(job)
            self.settle(d.message)
            return None
        new = lifecycle.fetch(job, now, worker_id)
        if not await self.store.update(new, expect_copy=job.copy):
            self.settle(d.message)
            return None
        vis = (
            job.visibility_timeout_ms
            or visibility_ms
            or self.settings.default_visibility_timeout_ms
        )
        timeout = job.timeout_ms or self.settings.default_timeout_ms
        mono = time.monotonic()
        lease = Lease(new, worker_id, d.message, vis, mono + vis / 1000, mono + timeout / 1000)
        self._leases[job.id] = lease
        self._arm(lease)
        self.metrics.started(new, (now - (job.enqueued_at_ms or job.created_at_ms)) / 1000)
        if self.tracing is not None:
            self.tracing.started(new)
        self.events.emit("job.started", new, now)
        return new

    def _arm(self, lease: Lease) -> None:
        self._stop_lease_timer(lease)
        when, kind = lease.next_event(self.settings.delivery_hold_ms / 1000)
        step = self._hand_over if kind == "handover" else self._lease_expired
        loop = asyncio.get_running_loop()
        handle = loop.call_later(
            max(0.0, when - time.monotonic()), lambda: self._spawn(step(lease.job_id, kind))
        )
        lease.timer = handle.cancel

    async def _hand_over(self, job_id: str, _: str = "handover") -> None:
        """A lease held for `delivery_hold_ms`: before the broker's consumer_timeout closes
        the gateway channel over it, a lease timer goes on the delay ladder (the job's
        current copy, due at the lease deadline) and the delivery is acked. The job stays
        active under its worker; the timer is what returns it to its queue if this daemon
        is gone when the deadline comes (`_fire`). Nothing changes state, so nothing is
        recorded: publish, then ack."""
        lease = self._leases.get(job_id)
        if lease is None:
            return
        message = lease.message
        if message is None:  # its delivery went with a lost channel: only the deadline left
            self._arm(lease)
            return
        try:
            await self._park(lease.job, self._lease_deadline_ms(lease))
        except OjsError as exc:  # broker away: keep holding it; tried again shortly
            log.warning("lease of job %s could not be handed over (%s)", job_id, exc.message)
            self._retry_expiry(lease, "handover")
            return
        if self._leases.get(job_id) is lease and lease.message is message:
            self.settle(message)
            lease.message, lease.held_since = None, None
            self._arm(lease)

    def _lease_deadline_ms(self, lease: Lease) -> int:
        """The lease's next deadline on the wall clock (for a timer on the ladder)."""
        deadline, _ = lease.next_deadline()
        return self._now() + max(0, round((deadline - time.monotonic()) * 1000))

    @staticmethod
    def _stop_lease_timer(lease: Lease) -> None:
        if lease.timer is not None:
            lease.timer()
            lease.timer = None

    async def _lease_expired(self, job_id: str, kind: str) -> None:
        lease = self._leases.get(job_id)
        job = await self.store.get(job_id)
        if lease is None or job is None or job.state is not JobState.ACTIVE:
            self._leases.pop(job_id, None)
            return
        job = self._with_progress(job)
        now = self._now()
        new = lifecycle.lease_expired(job, now, kind, self._rng)
        try:
            advanced = await self._advance(new, lease.message, job.copy)
        except BackendUnavailable:
            # The broker is away: try again shortly (a reconnect re-arms it too), never
            # leave the job active with no timer.
            self._retry_expiry(lease, kind)
            return
        if advanced:
            self._leases.pop(job_id, None)
            self.metrics.lease_expired(job, kind)
            if self.tracing is not None:
                self.tracing.finished(job, new, "lease_expired")
            self._after_failure_events(new, now)

    def _retry_expiry(self, lease: Lease, kind: str) -> None:
        self._stop_lease_timer(lease)
        step = self._hand_over if kind == "handover" else self._lease_expired
        handle = asyncio.get_running_loop().call_later(
            LEASE_RETRY_S, lambda: self._spawn(step(lease.job_id, kind))
        )
        lease.timer = handle.cancel

    async def _owned_active(self, job_id: str, worker_id: str | None) -> tuple[Job, Lease | None]:
        lease = self._leases.get(job_id)
        job = self._with_progress(lease.job) if lease is not None else await self.get(job_id)
        if job.state is not JobState.ACTIVE:
            raise Conflict(
                f"job {job_id} is {job.state.value}, not active",
                details={"job_id": job_id, "current_state": job.state.value},
            )
        if worker_id and job.worker_id and worker_id != job.worker_id:
            raise Conflict(
                f"job {job_id} is leased to worker {job.worker_id}, not {worker_id}",
                details={"job_id": job_id, "worker_id": job.worker_id},
            )
        return job, lease

    async def ack(self, job_id: str, result: Any, worker_id: str | None) -> Job:
        job, lease = await self._owned_active(job_id, worker_id)
        now = self._now()
        new = lifecycle.ack(job, now, result)
        if not await self.store.update(new, expect_copy=job.copy):
            raise Conflict(f"job {job_id} changed concurrently; GET it to see its state")
        self._drop_lease(job_id)
        if lease is not None:
            self.settle(lease.message)
        duration = now - (job.started_at_ms or now)
        self.metrics.completed(new, duration / 1000)
        self.events.emit("job.completed", new, now, duration_ms=duration)
        if self.tracing is not None:
            self.tracing.finished(job, new, "completed")
        return new

    def _drop_lease(self, job_id: str) -> None:
        lease = self._leases.pop(job_id, None)
        if lease is not None:
            self._stop_lease_timer(lease)

    async def nack(
        self, job_id: str, report: FailureReport, worker_id: str | None, requeue: bool
    ) -> Job:
        job, lease = await self._owned_active(job_id, worker_id)
        now = self._now()
        if requeue:
            new = lifecycle.requeue(job, now)
        else:
            new = lifecycle.fail(job, now, report, self._rng)
        if not await self._advance(new, lease.message if lease else None, job.copy):
            raise Conflict(f"job {job_id} changed concurrently; GET it to see its state")
        self._drop_lease(job_id)
        if not requeue:
            self._after_failure_events(new, now)
        if self.tracing is not None:
            self.tracing.finished(job, new, "requeued" if requeue else "failed")
        return new

    def _after_failure_events(self, new: Job, now: int) -> None:
        if new.state is JobState.AVAILABLE:
            return
        self.metrics.failed(new)
        self.events.emit("job.failed", new, now, error=new.error)
        if new.state is JobState.RETRYABLE:
            self.events.emit("job.retrying", new, now, retry_delay_ms=new.retry_delay_ms)
        elif new.state is JobState.DISCARDED:
            self.metrics.discarded(new)
            self.events.emit("job.discarded", new, now, dead_letter=new.dead_letter)

    async def heartbeat(
        self, worker_id: str | None, job_ids: list[str], visibility_ms: int | None
    ) -> tuple[str, list[str]]:
        """Extend the leases named; answer the directive for this worker."""
        extended: list[str] = []
        directive = self._worker_directives.get(worker_id or "", "running")
        now = self._now()
        self.workers.seen(worker_id, now)
        for job_id in job_ids:
            lease = self._leases.get(job_id)
            if lease is None or (worker_id and lease.worker_id and lease.worker_id != worker_id):
                continue
            vis = visibility_ms or lease.visibility_ms
            lease.visibility_deadline = time.monotonic() + vis / 1000
            self._arm(lease)
            extended.append(job_id)
            if self.settings.test_mode:
                directive = await self._test_directive(job_id, directive)
        for job_id in extended:
            job = await self.store.get(job_id)
            if job is not None:
                self.events.emit("job.heartbeat", job, now, worker_id=worker_id)
        return directive, extended

    async def _test_directive(self, job_id: str, current: str) -> str:
        """Conformance hook: a job's meta.test_directive is echoed to the worker holding it."""
        job = await self.store.get(job_id)
        wanted = job.meta.get("test_directive") if job is not None else None
        if wanted in _DIRECTIVES and _DIRECTIVES.index(wanted) > _DIRECTIVES.index(current):
            return str(wanted)
        return current

    def set_worker_directive(self, worker_id: str, directive: str) -> None:
        if directive not in _DIRECTIVES:
            raise InvalidRequest(f"directive must be one of {', '.join(_DIRECTIVES)}")
        self._worker_directives[worker_id] = directive

    # --- progress (ojs-progress) and worker beats (ojs-graceful-shutdown) --------------------

    def _with_progress(self, job: Job) -> Job:
        """The job with its latest reported progress, which may not be in the store yet."""
        latest = self._progress.get(job.id)
        if latest is None or job.state is not JobState.ACTIVE or latest["attempt"] != job.attempt:
            return job
        return evolve(job, progress=latest)

    async def report_progress(
        self, job_id: str, update: ProgressUpdate, worker_id: str | None = None
    ) -> tuple[Job, bool]:
        """Take a progress report for an active job: (the job as it now reads, applied).

        A report for a job that is not active (finished, cancelled, back in its queue) or is
        held by another worker changes nothing and is not an error: progress is
        fire-and-forget (PRG-007). It counts as a heartbeat (PRG-008). It is not written to
        the store here: `_flush_progress` writes the latest once a second, and every move
        out of `active` takes it along (`_with_progress`)."""
        job = await self.get(job_id)
        if job.state is not JobState.ACTIVE or (
            worker_id and job.worker_id and worker_id != job.worker_id
        ):
            return job, False
        now = self._now()
        merged = progress.merge(job.progress, update, job.attempt, now)
        self._progress[job_id] = merged
        lease = self._leases.get(job_id)
        if lease is not None:
            lease.visibility_deadline = time.monotonic() + lease.visibility_ms / 1000
            self._arm(lease)
        job = evolve(job, progress=merged)
        self._announce_progress(job)
        return job, True

    async def native_progress(self, report: ControlMessage, queue: str | None) -> Job:
        """A native worker's `ojs.control.progress`: a heartbeat (the first marks the job
        active, as `native_heartbeat` does) carrying a progress report."""
        assert report.job_id is not None and report.progress is not None
        await self.native_heartbeat(report, queue)
        job, _ = await self.report_progress(report.job_id, report.progress, report.worker_id)
        return job

    def _announce_progress(self, job: Job) -> None:
        """At most one `progress.updated` event per job per PROGRESS_FLUSH_S; a report in
        between is announced by the next flush (the latest value, not each one)."""
        last = self._progress_announced.get(job.id)
        mono = time.monotonic()
        if last is not None and mono - last < PROGRESS_FLUSH_S:
            self._progress_unannounced.add(job.id)
            return
        self._progress_announced[job.id] = mono
        self._progress_unannounced.discard(job.id)
        wire = progress.to_wire(job.progress)
        self.events.emit(
            "progress.updated", job, self._now(), progress=wire["progress"],
            message=wire["message"], data=wire["data"],
        )  # fmt: skip

    async def _flush_progress(self) -> None:
        """Write the latest progress of each job reported since the last flush (one store
        write per job per second, however often its worker reports). A job that left
        `active` (or started another attempt) meanwhile is skipped: its move took the
        progress along. The read and the write below run without yielding to another task
        (SQLite store calls do not suspend before their write), so no move slips between;
        the value leaves memory only once the store has it."""
        unannounced, self._progress_unannounced = self._progress_unannounced, set()
        for job_id, latest in list(self._progress.items()):
            job = await self.store.get(job_id)
            current = job is not None and job.state is JobState.ACTIVE
            if job is not None and current and job.attempt == latest["attempt"]:
                current = await self.store.update(
                    evolve(job, progress=latest), expect_copy=job.copy
                )
                lease = self._leases.get(job_id)
                if current and lease is not None and lease.job.attempt == job.attempt:
                    lease.job = evolve(lease.job, progress=latest)
            else:
                current = False
            if self._progress.get(job_id) is latest:
                del self._progress[job_id]
            if not current:
                self._progress_announced.pop(job_id, None)
            elif job_id in unannounced and job is not None:
                self._progress_announced.pop(job_id, None)
                self._announce_progress(evolve(job, progress=latest))
        stale = time.monotonic() - 2 * PROGRESS_FLUSH_S
        for job_id, announced in list(self._progress_announced.items()):
            if announced < stale:
                del self._progress_announced[job_id]

    def worker_beat(
        self, worker_id: str, state: str | None, active_jobs: int | None
    ) -> tuple[str, str]:
        """A worker's beat with its state (`drain` when it shuts down): (its state as
        recorded, the directive for it)."""
        recorded = self.workers.beat(worker_id, state, active_jobs, self._now())
        return recorded, self._worker_directives.get(worker_id, "running")

    # --- timers ----------------------------------------------------------------------------

    async def _on_due(self, message: Inbound) -> None:
        ref = codec.read_ref(message.headers, message.message_id)
        if self._wait_for_record(ref, self._on_due(message)):
            return
        now = self._now()
        due_at = ref.due_at_ms if ref.due_at_ms is not None else now
        level = ladder_level_for(due_at - now)
        if level is not None or codec.delivery_count(message.headers) > 0:
            # Came back early from a long level: ride the next one down. Or returned by the
            # broker (a lost connection, a restart): published afresh, so returns never add
            # up to the due queue's delivery limit (past it, a quorum queue with no
            # dead-letter exchange drops the message, and with it the job's timer).
            repark = codec.Outgoing(message.body, codec.properties_of(message))
            key = DUE_ROUTING_KEY if level is None else ladder_routing_key(level)
            await self.broker.publish(self.broker.topology.delay_exchange, key, repark)
            self.settle(message)
            return
        self._hold(id(message), message, ref, due_at - now)

    def _hold(self, key_id: int, message: Inbound, ref: codec.CopyRef, delay_ms: int) -> None:
        """Keep a due message unacked and fire it after `delay_ms`."""
        loop = asyncio.get_running_loop()
        self._held[key_id] = loop.call_later(
            max(0, delay_ms) / 1000, lambda: self._spawn(self._fire(key_id, message, ref))
        )

    async def _fire(self, key_id: int, message: Inbound, ref: codec.CopyRef) -> None:
        self._held.pop(key_id, None)
        remaining = (ref.due_at_ms or 0) - self._now()
        if remaining > 0:  # timers may fire a fraction of a millisecond early: never run early
            self._hold(key_id, message, ref, remaining)
            return
        job = await self.store.get(ref.job_id) if ref.job_id else None
        if job is not None and job.copy == ref.copy and job.state is JobState.ACTIVE:
            await self._lease_timer_due(key_id, job, message, ref)
            return
        if (
            job is None
            or job.copy != ref.copy
            or job.state not in (JobState.SCHEDULED, JobState.RETRYABLE)
        ):
            self.settle(message)
            return
        now = self._now()
        if job.expires_at_ms is not None and job.expires_at_ms <= now:
            await self._expire(job)
            self.settle(message)
            return
        new = lifecycle.timer_due(job, now)
        try:
            fired = await self._advance(new, message, job.copy)
        except OjsError as exc:  # broker away or queue full: keep holding, try again shortly
            log.warning("timer of job %s could not fire (%s); retrying", job.id, exc.message)
            self._hold(key_id, message, ref, TIMER_RETRY_MS)
            return
        if fired:
            self.metrics.timer_fired(job.queue, (self._now() - (ref.due_at_ms or now)) / 1000)

    async def _lease_timer_due(
        self, key_id: int, job: Job, message: Inbound, ref: codec.CopyRef
    ) -> None:
        """The ladder timer of a handed-over lease. While this daemon holds the lease its own
        timer decides (heartbeats may have moved the deadline): the ladder timer moves on to
        the current deadline. A lease this daemon does not hold was lost with a daemon that
        died: the job returns to its queue, as after a visibility timeout."""
        lease = self._leases.get(job.id)
        try:
            if lease is not None:
                if lease.message is None:  # still the only thing that outlives this daemon
                    await self._park(lease.job, self._lease_deadline_ms(lease) + TIMER_RETRY_MS)
                self.settle(message)
                return
            await self._lost_lease_expired(job, message)
        except OjsError as exc:  # broker away: keep holding the timer, try again shortly
            log.warning("lease timer of job %s could not fire (%s); retrying", job.id, exc.message)
            self._hold(key_id, message, ref, TIMER_RETRY_MS)

    def _cancel_timers(self, leases: bool = True) -> None:
        for handle in self._held.values():
            handle.cancel()
        self._held.clear()
        if leases:
            for lease in self._leases.values():
                self._stop_lease_timer(lease)

    # --- expiry and retention --------------------------------------------------------------

    async def _expire(self, job: Job) -> None:
        now = self._now()
        new = lifecycle.expire(job, now)
        if await self.store.update(new, expect_copy=job.copy):
            buffered = self._buffers.remove(job.id)
            if buffered is not None:
                self.settle(buffered.message)
            self.metrics.discarded(new)
            self.events.emit("job.expired", new, now)
            self.events.emit("job.discarded", new, now, reason="expired")

    async def _expire_due(self) -> None:
        for job in await self.store.expiring(self._now(), 500):
            await self._expire(job)

    async def _prune(self) -> None:
        now = self._now()
        removed = await self.store.prune_finished(
            now - self.settings.retention_completed_ms, now - self.settings.retention_discarded_ms
        )
        if removed:
            log.info("retention removed %d finished jobs", removed)
        pruned = await self.store.prune_dead_letters(
            now - self.settings.dead_letter_max_age_ms, self.settings.dead_letter_max_per_queue
        )
        if pruned:
            log.info("dead-letter retention removed %d dead letters", pruned)
            self.metrics.dead_letters_pruned(pruned)

    # --- dead letters, queues, reset -------------------------------------------------------

    async def dead_letters(
        self, queue: str | None, limit: int, offset: int
    ) -> tuple[list[Job], int]:
        return await self.store.dead_letters(queue, limit, offset)

    async def _dead_letter(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is None or not (job.state is JobState.DISCARDED and job.dead_letter):
            raise NotFound(
                f"no dead letter with id {job_id}",
                details={"resource_type": "dead_letter", "resource_id": job_id},
            )
        return job

    async def retry_dead_letter(self, job_id: str) -> Job:
        job = await self._dead_letter(job_id)
        new = lifecycle.retry_dead_letter(job, self._now())
        await self._advance(new, None, job.copy)
        self.events.emit("job.enqueued", new, self._now(), reason="dead_letter_retry")
        return new

    async def retry_job(self, job_id: str) -> Job:
        """Admin retry of a discarded job (dead letter or not): available again, attempts
        reset, its history kept (ojs-admin-api §7.4). A cancelled job stays cancelled: the
        state machine lets nothing leave `cancelled` (push a copy instead)."""
        job = await self.get(job_id)
        if job.state is not JobState.DISCARDED:
            raise Conflict(
                f"job {job_id} is {job.state.value}: only a discarded job can be retried"
                + ("; push a copy of a cancelled one" if job.state is JobState.CANCELLED else ""),
                details={"job_id": job_id, "current_state": job.state.value},
            )
        new = lifecycle.retry_dead_letter(job, self._now())
        await self._advance(new, None, job.copy)
        self.events.emit("job.enqueued", new, self._now(), reason="admin_retry")
        return new

    async def delete_finished(self, job_id: str) -> None:
        """Admin delete of a finished (completed, cancelled or discarded) job's record."""
        job = await self.get(job_id)
        if not job.state.terminal:
            raise Conflict(
                f"job {job_id} is {job.state.value}: only a finished job can be deleted; "
                "cancel it first",
                details={"job_id": job_id, "current_state": job.state.value},
            )
        await self.store.delete(job_id)

    def leases_by_worker(self) -> dict[str, list[str]]:
        """The jobs leased to each HTTP worker now (worker id -> job ids)."""
        out: dict[str, list[str]] = {}
        for job_id, lease in self._leases.items():
            if lease.worker_id:
                out.setdefault(lease.worker_id, []).append(job_id)
        return out

    async def delete_dead_letter(self, job_id: str) -> None:
        await self._dead_letter(job_id)
        await self.store.delete(job_id)

    def unacked_deliveries(self) -> list[tuple[str, str, int]]:
        """Deliveries held unacked now, as (queue, holder, count): per job queue consumed
        for HTTP workers, those `buffered` and `leased`; and the `timer`s held from the
        due queue (queue ""). Read by /metrics."""
        buffered = self._buffers.sizes()
        leased: dict[str, int] = {}
        for lease in self._leases.values():
            if lease.message is not None:
                leased[lease.job.queue] = leased.get(lease.job.queue, 0) + 1
        held = [("", "timer", len(self._held))]
        for queue in sorted(set(self._gateways) | set(leased)):
            held.append((queue, "buffered", buffered.get(queue, 0)))
            held.append((queue, "leased", leased.get(queue, 0)))
        return held

    def consumer_utilization(self) -> dict[str, float]:
        """Per job queue consumed for HTTP workers: unacked deliveries over prefetch (0..1);
        1 means the broker sends no more until a job is acked or returned."""
        counts: dict[str, int] = {queue: 0 for queue in self._gateways}
        for queue, holder, count in self.unacked_deliveries():
            if holder != "timer" and queue in counts:
                counts[queue] += count
        prefetch = max(1, self.settings.prefetch)
        return {queue: min(1.0, count / prefetch) for queue, count in counts.items()}

    def _start_deletes(
        self, queues: set[str], names: set[str], hold: asyncio.Future[None]
    ) -> list[asyncio.Future[None]]:
        """Start deleting the broker queues of `queues` (`names`), each OJS queue's at once
        with the others', and any other non-fixed queue declared. `hold` is what uses of
        the queues wait for until then."""
        fixed = set(self.broker.topology.all_fixed_queues())
        strays = [n for n in self.broker.declared_queues() if n not in fixed and n not in names]
        deletes = [self._delete_in_background(queue, hold=hold) for queue in queues]
        if strays:  # declared for a queue the store never recorded (a failed first use)
            deletes.append(self._delete_in_background("", strays))
        return deletes

    @staticmethod
    async def _wait_for_deletes(deletes: list[asyncio.Future[None]], budget_s: float) -> None:
        """Wait at most `budget_s`; deletes still running then finish in the background (a
        use of their queue waits for them)."""
        if deletes:
            _, running = await asyncio.wait(deletes, timeout=budget_s)
            if running:
                log.warning("%d of %d queue deletes still running after %.0fs; they go on in "
                            "the background", len(running), len(deletes), budget_s)  # fmt: skip

    def _delete_in_background(
        self,
        queue: str,
        names: list[str] | None = None,
        hold: asyncio.Future[None] | None = None,
    ) -> asyncio.Future[None]:
        """Start deleting the broker queues of `queue` (or just `names`), gating its next
        use until done (in place of `hold`)."""
        pending = self._deleting.get(queue)
        if pending is not None and pending is not hold:  # not declared again since
            return pending
        if names is None:
            names = [spec.name for spec in reversed(self.broker.topology.queues_of(queue))]
        task = asyncio.ensure_future(self.broker.delete_queues(names))
        self._deleting[queue] = task

        def done(finished: asyncio.Future[None]) -> None:
            if self._deleting.get(queue) is finished:
                del self._deleting[queue]
            if not finished.cancelled() and finished.exception() is not None:
                log.warning("deleting %s failed: %s", ", ".join(names), finished.exception())

        task.add_done_callback(done)
        return task

    async def delete_queue(self, queue: str, force: bool) -> dict[str, Any]:
        """Remove an OJS queue: its broker queues (job, control, dead-letter) and its store
        rows. Refused (409) while it holds unfinished jobs, unless `force`, which cancels
        them first. What the daemon holds for it (gateway, buffer, leases, consumers) goes
        too; timers of its jobs on the delay ladder find no job when due and are dropped. A
        later push or fetch simply declares the queue again."""
        validate_queue(queue)
        if queue in self._deleting:
            raise Conflict(f"queue {queue!r} is being deleted; retry shortly",
                           details={"queue": queue})  # fmt: skip
        known = queue in self._queues_ready or any(
            info.name == queue for info in await self.store.queues()
        )
        if not known and not await self.store.unfinished(queue):
            raise NotFound(f"queue {queue!r} not found",
                           details={"resource_type": "queue", "resource_id": queue})  # fmt: skip
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._deleting[queue] = gate  # from here on, a first use of the queue waits
        was_ready = queue in self._queues_ready
        self._queues_ready.discard(queue)
        try:
            await self._drain_moves(queue)
            open_jobs = await self.store.unfinished(queue)
            if open_jobs and not force:
                by_state: dict[str, int] = {}
                for job in open_jobs:
                    by_state[job.state.value] = by_state.get(job.state.value, 0) + 1
                if was_ready:
                    self._queues_ready.add(queue)
                raise QueueNotEmpty(
                    f"queue {queue!r} holds {len(open_jobs)} unfinished jobs; delete with "
                    "force=true to cancel them and delete it anyway",
                    details={"queue": queue, "open_jobs": by_state},
                )
            cancelled = await self._cancel_all(open_jobs)
            await self._let_go_of(queue)
            names = [spec.name for spec in reversed(self.broker.topology.queues_of(queue))]
            await self.broker.delete_queues(names)
            removed = await self.store.delete_queue(queue)
        finally:
            if self._deleting.get(queue) is gate:
                del self._deleting[queue]
            gate.set_result(None)
        self._depths.clear()
        log.info("deleted queue %s: %d broker queues, %d jobs (%d of them cancelled)",
                 queue, len(names), removed, cancelled)  # fmt: skip
        return {"queue": queue, "deleted": True, "broker_queues": names,
                "jobs_deleted": removed, "jobs_cancelled": cancelled}  # fmt: skip

    async def _drain_moves(self, queue: str) -> None:
        """Wait (bounded) for moves of the queue's jobs already publishing their next copy:
        once recorded, they are counted (and cancelled if forced) like any other job."""
        deadline = time.monotonic() + DELETE_DRAIN_S
        while time.monotonic() < deadline:
            moving = [await self.store.get(job_id) for job_id in list(self._recording)]
            if not any(job is not None and job.queue == queue for job in moving):
                return
            await asyncio.sleep(0.01)

    async def _cancel_all(self, jobs: list[Job]) -> int:
        """Cancel every job given (a forced queue delete), as `cancel` would, each with its
        job.cancelled event; a job that moved meanwhile is read again and cancelled then."""
        cancelled = 0
        for start in range(0, len(jobs), 500):
            chunk = jobs[start : start + 500]
            results = await asyncio.gather(*(self._cancel_for_delete(job) for job in chunk))
            cancelled += sum(results)
        return cancelled

    async def _cancel_for_delete(self, job: Job) -> bool:
        for _ in range(5):
            if job.state.terminal:
                return False
            now = self._now()
            new = lifecycle.cancel(job, now)
            if await self.store.update(new, expect_copy=job.copy):
                lease = self._leases.pop(job.id, None)
                if lease is not None:
                    self._stop_lease_timer(lease)
                elif job.state in (JobState.AVAILABLE, JobState.ACTIVE):
                    await self._tell_native_workers(new)
                if self.tracing is not None:
                    self.tracing.finished(job, new, "cancelled")
                self.events.emit("job.cancelled", new, now, reason="queue_deleted")
                return True
            fresh = await self.store.get(job.id)
            if fresh is None:
                return False
            job = fresh
        return False

    async def _let_go_of(self, queue: str) -> None:
        """Stop consuming the queue's broker queues and drop what the daemon holds of them:
        buffered deliveries and leases (their messages go with the queue)."""
        t = self.broker.topology
        self._gateways.pop(queue, None)
        for name in (t.job_queue(queue), t.control_queue(queue), t.dead_letter_queue(queue)):
            await self.broker.stop_consumer(name)
        self._buffers.drop_queue(queue)
        for job_id in [i for i, lease in self._leases.items() if lease.job.queue == queue]:
            self._drop_lease(job_id)

    async def queue_names(self) -> list[tuple[str, int]]:
        return [(q.name, q.created_at_ms) for q in await self.store.queues()]

    async def reset(self) -> None:
        """Test mode: forget everything, here and on the broker. The queues of every OJS
        queue are deleted (a purge would leave them costing the broker file handles); the
        fixed topology is only purged, as the daemon needs it at once."""
        started = time.monotonic()
        t = self.broker.topology
        self._cancel_timers()
        queues = self._queues_ready | {info.name for info in await self.store.queues()}
        self._queues_ready.clear()
        self._gateways.clear()
        # Until their deletes start, a use of these queues waits (then for the delete).
        hold: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for queue in queues:
            self._deleting.setdefault(queue, hold)
        try:
            # The queues of OJS queues: their consumers stop with their (bounded) delete.
            per_queue = {spec.name for queue in queues for spec in t.queues_of(queue)}
            await self.broker.stop_consumers(exclude=per_queue)
            self._buffers.clear()
            self._leases.clear()
            if self.tracing is not None:
                self.tracing.close()
            self._depths.clear()
            self._unpublished.clear()
            # Purged first: beside hundreds of deletes, a purge waits seconds for its turn.
            await self.broker.purge(t.all_fixed_queues())
            deletes = self._start_deletes(queues, per_queue, hold)
        finally:
            for queue in queues:
                if self._deleting.get(queue) is hold:
                    del self._deleting[queue]
            hold.set_result(None)
        await self._wait_for_deletes(deletes, RESET_DELETE_BUDGET_S)
        log.info("test-mode reset in %.2fs (the queues of %d OJS queues deleted)",
                 time.monotonic() - started, len(queues))  # fmt: skip
        await self.store.reset()
        self.events.clear()
        self._worker_directives.clear()
        self.workers.clear()
        self._progress.clear()
        self._progress_announced.clear()
        self._progress_unannounced.clear()
        t = self.broker.topology
        await self.broker.consume(t.due_queue, t.due_queue_arguments(), 2000, self._on_due)
        for hook in self.on_reset:
            await hook()


def _delivery_limit_message(headers: dict[str, Any]) -> str:
    count = codec.delivery_count(headers)  # RabbitMQ 4.x says how often; 3.x says 0
    times = f" after {count} deliveries" if count else ""
    return (
        f"the broker dead-lettered the job{times}: its workers took it and returned it "
        "(a crash, a closed channel) more often than the queue's delivery limit allows, "
        "without reporting an outcome"
    )


def _past_time(value: Any, now_ms: int) -> int:
    """A producer's RFC 3339 timestamp if it is readable and not in the future, else now."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError, OverflowError):
            return min(parse_rfc3339_ms(value), now_ms)
    return now_ms
