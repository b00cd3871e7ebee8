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
from ojs_amqp.core import lifecycle
from ojs_amqp.core.envelope import parse_enqueue, validate_queue
from ojs_amqp.core.ids import UUIDv7Generator, is_uuidv7
from ojs_amqp.core.job import SYSTEM_FIELDS, Job, JobState
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.core.times import parse_rfc3339_ms
from ojs_amqp.engine.backpressure import DepthCache
from ojs_amqp.engine.dispatch import Arrivals, Delivery, Lease, ReadyBuffers
from ojs_amqp.engine.events import EventLog
from ojs_amqp.errors import (
    BackendUnavailable,
    Conflict,
    Duplicate,
    InvalidRequest,
    NotFound,
    OjsError,
    QueueFull,
)
from ojs_amqp.metrics import Metrics
from ojs_amqp.settings import Settings
from ojs_amqp.store.base import JobStore
from ojs_amqp.tracing import JobTracing

log = logging.getLogger("ojs_amqp.engine")

FETCH_MAX_COUNT = 100
#: How long a FETCH that opens a queue's gateway waits for the queue's waiting jobs.
GATEWAY_FILL_S = 0.5
#: How soon a lease expiry or a due timer that could not be published (broker away, queue
#: full) is tried again.
LEASE_RETRY_S = 1.0
TIMER_RETRY_MS = 1000
_DIRECTIVES = ("running", "quiet", "terminate")


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
        self._buffers = ReadyBuffers()
        self._leases: dict[str, Lease] = {}
        self._arrivals = Arrivals()
        self._queues_ready: set[str] = set()
        #: Job queues the daemon consumes for HTTP workers, and when one was last fetched
        #: from. Consuming only while HTTP workers ask leaves the queue to native workers.
        self._gateways: dict[str, float] = {}
        self._held: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._worker_directives: dict[str, str] = {}
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

    async def _ensure_queue(self, queue: str) -> None:
        if queue in self._queues_ready:
            return
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

    async def _open_gateway(self, queue: str) -> None:
        """Consume the job queue for HTTP workers (DESIGN §5), from the first FETCH on."""
        self._gateways[queue] = time.monotonic()
        t = self.broker.topology
        if self.broker.consuming(t.job_queue(queue)):
            return

        async def on_job(message: Inbound) -> None:
            await self._on_job_delivery(queue, message)

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
        """Buffered deliveries older than `delivery_hold_ms` go back to their queue (and come
        straight back, keeping their place in line) before the broker's consumer_timeout
        closes the channel over them."""
        cutoff = time.monotonic() - self.settings.delivery_hold_ms / 1000
        for delivery in self._buffers.take_older_than(cutoff):
            delivery.message.reject(requeue=True)

    async def _close_idle_gateways(self) -> None:
        """Stop consuming queues no HTTP worker fetched from lately and none holds a lease
        on; their buffered jobs go back to the queue, to whichever worker comes."""
        cutoff = time.monotonic() - self.settings.gateway_idle_ms / 1000
        leased = {lease.job.queue for lease in self._leases.values() if lease.message}
        for queue, last_fetch in list(self._gateways.items()):
            if last_fetch < cutoff and queue not in leased:
                del self._gateways[queue]
                await self.broker.stop_consumer(self.broker.topology.job_queue(queue))
                self._buffers.drop_queue(queue)

    # --- publishing copies -----------------------------------------------------------------

    async def _publish_copy(self, job: Job) -> None:
        """Publish the broker copy that represents the job's (new) state, if it has one."""
        t = self.broker.topology
        state = job.state
        if state is JobState.AVAILABLE:
            await self._ensure_queue(job.queue)
            if job.queue in self._gateways:
                self._buffers.expect(job)
            await self.broker.publish(t.direct_exchange, job.queue, codec.encode(job))
        elif state is JobState.SCHEDULED:
            await self._park(job, job.scheduled_at_ms or self._now())
        elif state is JobState.RETRYABLE:
            await self._park(job, job.next_attempt_at_ms or self._now())
        elif state is JobState.DISCARDED:
            await self._ensure_queue(job.queue)
            await self.broker.publish(t.dlx_exchange, job.queue, codec.encode(job))

    async def _park(self, job: Job, due_at_ms: int) -> None:
        """Put a waiting job on the delay ladder (or straight into the due queue)."""
        level = ladder_level_for(due_at_ms - self._now())
        key = DUE_ROUTING_KEY if level is None else ladder_routing_key(level)
        message = codec.encode(job, due_at_ms=due_at_ms)
        await self.broker.publish(self.broker.topology.delay_exchange, key, message)

    async def _advance(self, new: Job, current: Inbound | None, expect_copy: int) -> bool:
        """The one move rule: publish the next copy, record it, then ack the current copy.

        Between the publish and the record, the new copy can already be delivered back to
        us; such a delivery waits (see `_wait_for_record`) instead of being judged against
        the old row.
        """
        self._recording[new.id] = new.copy
        try:
            await self._publish_copy(new)
            written = await self.store.update(new, expect_copy=expect_copy)
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
        bound = self.settings.max_depth_for(queue)
        if bound <= 0:
            return
        depth = await self._depths.depth(queue)
        if depth >= bound:
            raise QueueFull(
                f"queue {queue!r} holds {depth} open jobs, its bound is {bound}",
                details={"queue": queue, "depth": depth, "max_depth": bound},
                headers={"X-OJS-Queue-Depth": str(depth), "X-OJS-Queue-Bound": str(bound)},
            )

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
        return job

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
            self._arm(lease)
            return
        # The daemon restarted while a worker held the job: the lease is gone, so the job
        # goes back to available, as after a visibility timeout.
        new = lifecycle.lease_expired(job, self._now(), "visibility", self._rng)
        if await self._advance(new, message, job.copy) and self.tracing is not None:
            self.tracing.finished(job, new, "lease_expired")

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
            job = await self.store.get(ref.job_id) if ref.job_id else None
            ours = (message.headers or {}).get(codec.H_STATE) == JobState.DISCARDED.value
            if job is None and ref.job_id and not ours:
                body = orjson.loads(message.body)
                job = await self._adopt_envelope(body, ref.job_id, message.routing_key)
            if job is not None:
                await self._worker_rejected(job, ref.copy)
        except (OjsError, orjson.JSONDecodeError) as exc:
            log.warning("could not archive a dead letter: %s", exc)
        self.settle(message)

    async def _worker_rejected(self, job: Job, copy: int | None) -> None:
        if copy is not None and copy != job.copy:
            return
        leased = job.id in self._leases
        active = job if leased else self._native_start(job, copy, self._now(), None)
        if active is None or active.state is not JobState.ACTIVE:
            return
        new = lifecycle.worker_discard(active, self._now(), "rejected by a worker")
        if await self.store.update(new, expect_copy=job.copy):
            self._drop_lease(job.id)
            self.metrics.discarded(new)
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
            await self._advance(replace(job, copy=job.copy + 1), None, job.copy)
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
        job = await self.store.get(report.job_id)
        adopted = None
        if job is None and report.envelope is not None and report.kind == protocol.COMPLETED:
            # Never seen (binding PUSH) and already done: adopt and complete in one write
            # (announced first, so its events keep their order).
            job = adopted = self._envelope_job(report.envelope, report.job_id, queue)
            self._announce_adopted(adopted)
        elif job is None:
            job = await self._known_or_adopted(report.job_id, report.envelope, queue)
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
        if job.state is JobState.AVAILABLE:
            active = self._native_start(job, beat.copy, now, beat.worker_id)
            if active is not None and await self.store.update(active, expect_copy=job.copy):
                job = active
                if self.tracing is not None:
                    self.tracing.started(active)
        if job.state is JobState.ACTIVE:
            self.events.emit("job.heartbeat", job, now, worker_id=beat.worker_id)
        return job

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
        job = lease.job if lease is not None else await self.get(job_id)
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

    # --- timers ----------------------------------------------------------------------------

    async def _on_due(self, message: Inbound) -> None:
        ref = codec.read_ref(message.headers, message.message_id)
        if self._wait_for_record(ref, self._on_due(message)):
            return
        now = self._now()
        due_at = ref.due_at_ms if ref.due_at_ms is not None else now
        level = ladder_level_for(due_at - now)
        if level is not None:
            # Came back early from a long level: ride the next one down.
            repark = codec.Outgoing(message.body, codec.properties_of(message))
            key = ladder_routing_key(level)
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
            new = lifecycle.lease_expired(job, self._now(), "visibility", self._rng)
            if await self._advance(new, message, job.copy):
                self.metrics.lease_expired(job, "visibility")
                if self.tracing is not None:
                    self.tracing.finished(job, new, "lease_expired")
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

    async def queue_names(self) -> list[tuple[str, int]]:
        return [(q.name, q.created_at_ms) for q in await self.store.queues()]

    async def reset(self) -> None:
        """Test mode: forget everything, here and on the broker."""
        self._cancel_timers()
        await self.broker.stop_consumers()
        self._buffers.clear()
        self._leases.clear()
        if self.tracing is not None:
            self.tracing.close()
        self._queues_ready.clear()
        self._gateways.clear()
        self._depths.clear()
        self._unpublished.clear()
        await self.broker.purge(self.broker.declared_queues())
        await self.store.reset()
        self.events.clear()
        self._worker_directives.clear()
        t = self.broker.topology
        await self.broker.consume(t.due_queue, t.due_queue_arguments(), 2000, self._on_due)
        for hook in self.on_reset:
            await hook()


def _past_time(value: Any, now_ms: int) -> int:
    """A producer's RFC 3339 timestamp if it is readable and not in the future, else now."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError, OverflowError):
            return min(parse_rfc3339_ms(value), now_ms)
    return now_ms
