"""JobEngine: one method per OJS operation, a thin facade over the engine's parts.

Every move between states follows one rule (`moves.py`): publish the next copy with a
confirm, then record it in the store, then ack the current copy. Each concern is a part of
its own, taking only the ports and peers it needs (docs/architecture.md has the table);
this class builds them, starts and stops them, and keeps the public methods the HTTP API,
the native edge, cron and the tests call.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from ojs_amqp.clock import now_ms
from ojs_amqp.core.envelope import validate_queue
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.job import Job
from ojs_amqp.core.progress import ProgressUpdate
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.engine.admission import Admission
from ojs_amqp.engine.adoption import Adoption
from ojs_amqp.engine.commands import Commands
from ojs_amqp.engine.dead_letters import DeadLetters
from ojs_amqp.engine.deletion import QueueDeletion
from ojs_amqp.engine.dispatch import ReadyBuffers
from ojs_amqp.engine.events import EventLog
from ojs_amqp.engine.gateway import Gateway, GatewayPeers
from ojs_amqp.engine.leases import Leases
from ojs_amqp.engine.maintenance import Maintenance
from ojs_amqp.engine.moves import Mover
from ojs_amqp.engine.native import NativeReports
from ojs_amqp.engine.outcomes import OutcomeListener, Outcomes
from ojs_amqp.engine.ports import EngineStore, JobTransport, LoopScheduler, Scheduler
from ojs_amqp.engine.producer import Producer
from ojs_amqp.engine.progress import PROGRESS_FLUSH_S, Progress
from ojs_amqp.engine.queues import QueueRegistry
from ojs_amqp.engine.recovery import Recovery
from ojs_amqp.engine.tasks import Tasks
from ojs_amqp.engine.timers import Timers
from ojs_amqp.engine.workers import WorkerRegistry
from ojs_amqp.metrics import Metrics
from ojs_amqp.settings import Settings
from ojs_amqp.tracing import JobTracing

log = logging.getLogger("ojs_amqp.engine")

#: How often the outbox flag of confirmed pushes is cleared, and idle gateways closed.
OUTBOX_FLUSH_S = 0.05
GATEWAY_CHECK_S = 5.0
EXPIRY_SWEEP_S = 1.0


class JobEngine:
    def __init__(
        self,
        settings: Settings,
        store: EngineStore,
        transport: JobTransport,
        events: EventLog,
        metrics: Metrics,
        *,
        clock: Callable[[], int] = now_ms,
        rng: Callable[[], float] = random.random,
        tracing: JobTracing | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.transport = transport
        #: The adapter behind the transport (amqp `Broker`), for edges not yet on ports
        #: (http/app.py's health and metrics, tests); None for an in-memory transport.
        self.broker: Any = getattr(transport, "broker", None)
        self.events = events
        self.metrics = metrics
        self.scheduler = sched = scheduler if scheduler is not None else LoopScheduler(clock)
        #: HTTP workers' announced states (beat, drain), for fetch and worker health.
        self.workers = WorkerRegistry()
        self.tasks = Tasks(sched, metrics.background_failed)
        self.outcomes = outcomes = Outcomes(metrics, events, tracing)
        ids = UUIDv7Generator()
        self.queues = queues = QueueRegistry(transport, store, sched)
        self.mover = mover = Mover(transport, store, queues, sched, self.tasks, metrics)
        self.progress = progress = Progress(store, sched, outcomes)
        self.leases = leases = Leases(settings, store, sched, mover, outcomes, progress,
                                      self.tasks, rng)  # fmt: skip
        progress.leases = leases
        self.admission = Admission(settings, store)
        self.adoption = adoption = Adoption(store, sched, outcomes, progress, ids)
        self.producer = producer = Producer(store, sched, mover, self.admission, outcomes, ids)
        buffers = ReadyBuffers(sched.monotonic)
        self.maintenance = upkeep = Maintenance(settings, store, sched, mover, buffers, outcomes)
        self.gateway = gateway = Gateway(settings, transport, store, sched, GatewayPeers(
            mover, leases, upkeep, adoption, queues, self.workers, outcomes, buffers))  # fmt: skip
        mover.publishing_available = gateway.expect
        self.timers = timers = Timers(transport, store, sched, mover, leases, upkeep, outcomes,
                                      self.tasks)  # fmt: skip
        self.native = native = NativeReports(store, sched, mover, leases, adoption, progress,
                                             outcomes, self.workers, rng)  # fmt: skip
        self.dead = DeadLetters(store, sched, mover, leases, native, adoption, outcomes)
        queues.dead_letter_handler = self.dead.on_dead_letter
        self.commands = commands = Commands(settings, store, transport, sched,
                                            (mover, leases, gateway, progress, outcomes,
                                             self.workers))  # fmt: skip
        self.deletion = QueueDeletion(transport, store, sched, queues,
                                      (mover, gateway, leases, commands))  # fmt: skip
        transport.listen(Recovery(store, queues, (mover, gateway, leases, timers, producer)))
        #: Called after a test-mode reset, to re-register what the reset tore down.
        self.on_reset: list[Callable[[], Awaitable[None]]] = []
        #: Called once per job queue when the daemon first declares it (the native edge
        #: starts consuming its control queue).
        self.on_new_queue = queues.on_new_queue

    @property
    def tracing(self) -> JobTracing | None:
        return self.outcomes.tracing

    @tracing.setter
    def tracing(self, tracing: JobTracing | None) -> None:
        self.outcomes.tracing = tracing

    def listen(self, listener: OutcomeListener) -> None:
        """Hear every move that changes a job's state (outcomes.py has the policy)."""
        self.outcomes.listen(listener)

    # --- start / stop ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.timers.start()
        for info in await self.store.queues():
            await self.queues.ensure(info.name)
        await self.producer.replay_outbox()
        tasks, upkeep = self.tasks, self.maintenance
        tasks.every(EXPIRY_SWEEP_S, upkeep.expire_due, "expiry-sweeper")
        tasks.every(upkeep.prune_period_s, upkeep.prune, "retention")
        tasks.every(OUTBOX_FLUSH_S, self.producer.flush_published, "outbox-flush")
        tasks.every(PROGRESS_FLUSH_S, self.progress.flush, "progress-flush")
        tasks.every(GATEWAY_CHECK_S, self.gateway.close_idle, "gateways")
        hold_check_s = min(60.0, max(0.2, self.settings.delivery_hold_ms / 4000))
        tasks.every(hold_check_s, self.gateway.refresh_held, "holds")

    async def close(self) -> None:
        await self.tasks.stop_loops()
        await self.producer.flush_published()
        await self.progress.flush()
        self.timers.let_go()
        self.leases.stop_timers()
        self.outcomes.close()

    # --- producers -------------------------------------------------------------------------

    async def ensure_queue(self, queue: str) -> None:
        """Declare a queue a client announced (native `hello`)."""
        validate_queue(queue)
        await self.queues.ensure(queue)

    async def push(self, body: Any) -> Job:
        return await self.producer.push(body)

    async def validate_job(self, body: Any) -> None:
        await self.producer.validate(body)

    # --- one job ---------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        return await self.progress.read(job_id)

    async def activate(self, job_id: str) -> Job:
        return await self.commands.activate(job_id)

    async def cancel(self, job_id: str) -> Job:
        return await self.commands.cancel(job_id)

    # --- HTTP workers ----------------------------------------------------------------------

    async def fetch(
        self, queues: list[str], count: int, worker_id: str | None, visibility_ms: int | None
    ) -> list[Job]:
        return await self.gateway.fetch(queues, count, worker_id, visibility_ms)

    async def ack(self, job_id: str, result: Any, worker_id: str | None) -> Job:
        return await self.leases.ack(job_id, result, worker_id)

    async def nack(
        self, job_id: str, report: FailureReport, worker_id: str | None, requeue: bool
    ) -> Job:
        return await self.leases.nack(job_id, report, worker_id, requeue)

    async def heartbeat(
        self, worker_id: str | None, job_ids: list[str], visibility_ms: int | None
    ) -> tuple[str, list[str]]:
        return await self.commands.heartbeat(worker_id, job_ids, visibility_ms)

    def set_worker_directive(self, worker_id: str, directive: str) -> None:
        self.commands.set_worker_directive(worker_id, directive)

    def worker_beat(
        self, worker_id: str, state: str | None, active_jobs: int | None
    ) -> tuple[str, str]:
        return self.commands.worker_beat(worker_id, state, active_jobs)

    async def report_progress(
        self, job_id: str, update: ProgressUpdate, worker_id: str | None = None
    ) -> tuple[Job, bool]:
        return await self.progress.report(job_id, update, worker_id)

    # --- dead letters and queues -----------------------------------------------------------

    async def dead_letters(
        self, queue: str | None, limit: int, offset: int
    ) -> tuple[list[Job], int]:
        return await self.dead.page(queue, limit, offset)

    async def retry_dead_letter(self, job_id: str) -> Job:
        return await self.dead.retry(job_id)

    async def delete_dead_letter(self, job_id: str) -> None:
        await self.dead.delete(job_id)

    async def delete_queue(self, queue: str, force: bool) -> dict[str, Any]:
        deleted = await self.deletion.delete_queue(queue, force)
        self.admission.reset()
        return deleted

    async def queue_names(self) -> list[tuple[str, int]]:
        return [(q.name, q.created_at_ms) for q in await self.store.queues()]

    # --- what /metrics reads ---------------------------------------------------------------

    def unacked_deliveries(self) -> list[tuple[str, str, int]]:
        """Deliveries held unacked now, as (queue, holder, count): per job queue consumed
        for HTTP workers, those `buffered` and `leased`; and the `timer`s held from the
        due queue (queue "")."""
        buffered = self.gateway.buffers.sizes()
        leased = self.leases.held_per_queue()
        held = [("", "timer", len(self.timers))]
        for queue in sorted(set(self.gateway.open) | set(leased)):
            held.append((queue, "buffered", buffered.get(queue, 0)))
            held.append((queue, "leased", leased.get(queue, 0)))
        return held

    def consumer_utilization(self) -> dict[str, float]:
        """Per job queue consumed for HTTP workers: unacked deliveries over prefetch (0..1);
        1 means the broker sends no more until a job is acked or returned."""
        counts: dict[str, int] = {queue: 0 for queue in self.gateway.open}
        for queue, holder, count in self.unacked_deliveries():
            if holder != "timer" and queue in counts:
                counts[queue] += count
        prefetch = max(1, self.transport.prefetch_hint)
        return {queue: min(1.0, count / prefetch) for queue, count in counts.items()}

    # --- test mode -------------------------------------------------------------------------

    async def reset(self) -> None:
        """Test mode: forget everything, here and on the broker; each part forgets its own."""
        started = self.scheduler.monotonic()
        self.timers.let_go()
        self.leases.stop_timers()
        count = await self.deletion.delete_all(self._forget_held)
        log.info("test-mode reset in %.2fs (the queues of %d OJS queues deleted)",
                 self.scheduler.monotonic() - started, count)  # fmt: skip
        await self.store.reset()
        self.events.clear()
        self.commands.reset()
        self.workers.clear()
        self.progress.reset()
        await self.timers.start()
        for hook in self.on_reset:
            await hook()

    def _forget_held(self) -> None:
        self.gateway.reset()
        self.leases.reset()
        self.outcomes.close()
        self.admission.reset()
        self.producer.reset()
