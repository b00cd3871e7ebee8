"""The native AMQP worker: consume ojs.queue.{q}, run handlers, report, then ack.

Per delivery (docs/amqp-protocol.md, "Working"): drop it if the job was cancelled or has
expired; run the handler (async on the loop, plain functions in a thread pool); report
`ojs.report.completed` / `ojs.report.failed` to `control.{q}` with a confirm — outcomes that
finish close together share one `ojs.report.batch` (sdk/reports.py); then ack.
Jobs running longer than `heartbeat_interval` send `ojs.control.heartbeat`s. An exclusive
queue bound to ojs.exchange.workers (`cancel.{q}`) brings cancellations.

Talks to aiormq directly (no aio-pika objects per message) and keeps its own reconnect loop
with the project's backoff. ojs_amqp.amqp.Broker is not reused: it declares the daemon's
fixed topology (the delay ladder) and opens two connections; a worker needs neither. The
pipe, frame reader and frame-queue sizes of ojs_amqp/amqp/ are shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiormq
import orjson
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp.commands import Basic

from ojs_amqp.amqp import codec, frames, protocol
from ojs_amqp.amqp.broker import TopologyMismatch, backoff_seconds
from ojs_amqp.amqp.failures import PUBLISH_ERRORS
from ojs_amqp.amqp.pipe import Pipe, Settled
from ojs_amqp.amqp.topology import CONTROL_KEY_PREFIX, Topology
from ojs_amqp.clock import now_ms
from ojs_amqp.core.envelope import validate_queue
from ojs_amqp.core.times import parse_rfc3339_ms
from ojs_amqp.errors import OjsError
from ojs_amqp.logs import redact
from ojs_amqp.sdk import control
from ojs_amqp.sdk.announce import announce
from ojs_amqp.sdk.context import JobContext
from ojs_amqp.sdk.handlers import H, Handler, HandlerRegistry, Registered
from ojs_amqp.sdk.recent import RecentIds
from ojs_amqp.sdk.reports import Outcome, ReportBatcher
from ojs_amqp.sdk.rpc import REPLY_TO, ReplyRouter
from ojs_amqp.sdk.transport import DEFAULT_URL, connect

log = logging.getLogger("ojs_amqp.sdk.worker")

#: Before a delivery whose report could not be published goes back to its queue: a pause,
#: so a broken control queue does not become a hot redelivery loop.
REPORT_RETRY_PAUSE_S = 1.0
#: Default batching of reports (docs/sdk.md, "Batched reports"): at most this long after a
#: batch's first outcome, and this many reports (chosen with benchmarks/bench_sdk.py (b),
#: see docs/performance.md).
REPORT_BATCH_MS = 5.0
REPORT_BATCH_MAX = 100
#: Default prefetch = concurrency x this: a finished job's delivery stays unacked until its
#: (batched) report is confirmed, and must not keep the next job from arriving meanwhile.
PREFETCH_PER_SLOT = 3
#: A job's progress reports (ctx.progress) go out at most this often; the latest wins.
PROGRESS_INTERVAL_S = 1.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def expired(envelope: Mapping[str, Any], now: int) -> bool:
    """The envelope's `expires_at` has passed (an unreadable one counts as not set)."""
    text = envelope.get("expires_at")
    if not isinstance(text, str):
        return False
    try:
        return parse_rfc3339_ms(text) <= now
    except ValueError:
        return False


def attempt_of(headers: Mapping[str, Any], envelope: Mapping[str, Any]) -> int:
    """The attempt this delivery is: `x-ojs-attempt`, else the envelope's attempt + 1."""
    value = headers.get("x-ojs-attempt")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    attempt = envelope.get("attempt")
    return attempt + 1 if isinstance(attempt, int) and not isinstance(attempt, bool) else 1


def lost_deliveries(headers: Mapping[str, Any]) -> int:
    """How often this copy went back to its queue unfinished: the quorum queue's
    `x-delivery-count` (RabbitMQ 3.10 and 4.0 count every return: a worker that died or was
    stopped, a reject or nack with requeue). 0 when absent (a first delivery)."""
    value = headers.get("x-delivery-count")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def max_attempts_of(headers: Mapping[str, Any], envelope: Mapping[str, Any]) -> int | None:
    """The job's `max_attempts`: `x-ojs-max-attempts`, else the envelope's retry policy;
    None when neither says (a third-party message: then it is not judged here)."""
    candidates = [headers.get("x-ojs-max-attempts"), envelope.get("max_attempts")]
    retry = envelope.get("retry")
    if isinstance(retry, Mapping):
        candidates.insert(1, retry.get("max_attempts"))
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def attempts_spent(headers: Mapping[str, Any], envelope: Mapping[str, Any]) -> tuple[int, int]:
    """(attempts spent before this delivery, max_attempts), counting each return of this copy
    to its queue as an attempt lost with its worker (ojs-retry §9.2); max_attempts -1 when not
    known."""
    spent = attempt_of(headers, envelope) - 1 + lost_deliveries(headers)
    limit = max_attempts_of(headers, envelope)
    return spent, -1 if limit is None else max(1, limit)


@dataclass
class WorkerStats:
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    #: Deliveries acked without running: cancelled earlier, undecodable (nacked), or
    #: redelivered copies the daemon already shows finished.
    dropped: int = 0
    #: Reports that could not be published (the delivery was returned to its queue).
    report_failures: int = 0
    #: `ojs.report.batch` messages the broker confirmed (reports sent alone not counted).
    report_batches: int = 0
    #: Redelivered jobs not run because their attempts were spent on workers that died with
    #: them (`worker_lost`): the daemon applied `on_exhaustion`, or, when it did not answer,
    #: was sent the failure to apply it.
    worker_lost: int = 0
    reconnections: int = 0


@dataclass(slots=True, eq=False)
class _Running:
    ctx: JobContext
    task: asyncio.Task[Any] | None
    is_async: bool
    #: The delivered envelope, carried by the job's first heartbeat.
    body: bytes
    in_handler: bool = False
    finished: bool = False
    #: loop.time() when the next heartbeat is due (one ticker checks all running jobs).
    next_beat: float = 0.0
    #: A heartbeat with the envelope was confirmed: later beats leave it out.
    introduced: bool = False
    #: loop.time() before which no further progress report is sent (one a second at most).
    next_progress: float = 0.0


@dataclass(eq=False)
class _Session:
    """One connection's worth of state: its deliveries are void once it is gone."""

    connection: AbstractConnection
    pipe: Pipe
    consumer: AbstractChannel
    #: Set right after construction (it calls back into the session).
    reports: ReportBatcher = field(init=False)
    tags: dict[str, str] = field(default_factory=dict)  # consumer tag -> queue
    #: Answers to the restart questions of redelivered jobs (direct reply-to on `pipe`).
    replies: ReplyRouter = field(default_factory=ReplyRouter)
    running: dict[int, _Running] = field(default_factory=dict)  # delivery tag -> job
    waiting: set[asyncio.Task[Any]] = field(default_factory=set)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    stopping: bool = False
    #: Set when running jobs are given up (grace over, or an immediate stop).
    abandoned: bool = False

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


class Worker:
    """`worker = Worker(url, prefix=..., queues=["email"])`, register handlers with
    `@worker.handler("email.send")`, then `await worker.run()` (until SIGTERM or `stop()`)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "",
        queues: Sequence[str] = ("default",),
        concurrency: int = 10,
        heartbeat_interval: float = 5.0,
        grace_period: float = 30.0,
        worker_id: str | None = None,
        handlers: Mapping[str, Handler] | None = None,
        publish_timeout: float = 10.0,
        cancelled_capacity: int = 10_000,
        connection_name: str = "ojs-sdk-worker",
        clock: Callable[[], int] = now_ms,
        report_batch_ms: float = REPORT_BATCH_MS,
        report_batch_max: int = REPORT_BATCH_MAX,
        prefetch: int | None = None,
    ) -> None:
        if isinstance(queues, str):
            queues = [queues]
        if not queues:
            raise ValueError("a worker needs at least one queue")
        for queue in queues:
            validate_queue(queue)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if report_batch_ms < 0:
            raise ValueError("report_batch_ms cannot be negative")
        if not 1 <= report_batch_max <= protocol.MAX_BATCH:
            raise ValueError(f"report_batch_max must be between 1 and {protocol.MAX_BATCH}")
        if prefetch is not None and prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.url = url
        self.topology = Topology(prefix)
        self.queues = list(dict.fromkeys(queues))
        self.concurrency = concurrency
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.worker_id = worker_id or default_worker_id()
        self.publish_timeout = publish_timeout
        self.connection_name = connection_name
        self.report_batch_ms = report_batch_ms
        self.report_batch_max = report_batch_max
        self._prefetch = prefetch
        self.handlers = HandlerRegistry(handlers)
        self.stats = WorkerStats()
        self._cancelled_capacity = cancelled_capacity
        self._cancelled = RecentIds(cancelled_capacity)
        self._clock = clock
        self._session: _Session | None = None
        self._slots: asyncio.Semaphore | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._done = asyncio.Event()
        self._grace_override: float | None = None
        self._interrupts = 0
        self._threads_busy = 0
        self._threads_lock = threading.Lock()
        self._report_keys = {q: CONTROL_KEY_PREFIX + q for q in self.queues}
        #: Set once consumers are registered (tests and the benchmark wait on it).
        self.consuming = asyncio.Event()

    # --- registration ----------------------------------------------------------------------

    def handler(self, job_type: str) -> Callable[[H], H]:
        """`@worker.handler("email.send")` on an `async def` or a plain function."""
        return self.handlers.handler(job_type)

    def register(self, job_type: str, fn: Handler) -> None:
        self.handlers.register(job_type, fn)

    def configured(self, **changes: Any) -> Worker:
        """A new worker with the same handlers and these settings changed (the CLI uses it)."""
        settings: dict[str, Any] = {
            "url": self.url, "prefix": self.topology.prefix, "queues": self.queues,
            "concurrency": self.concurrency, "heartbeat_interval": self.heartbeat_interval,
            "grace_period": self.grace_period, "worker_id": self.worker_id,
            "publish_timeout": self.publish_timeout, "connection_name": self.connection_name,
            "cancelled_capacity": self._cancelled_capacity, "clock": self._clock,
            "report_batch_ms": self.report_batch_ms, "report_batch_max": self.report_batch_max,
            "prefetch": self._prefetch,
        }  # fmt: skip
        settings.update(changes)
        return Worker(handlers=dict(self.handlers), **settings)

    @property
    def prefetch(self) -> int:
        """Unacked deliveries per consumed queue (Basic.Qos): 3 x `concurrency` unless set.
        Deliveries whose report awaits its confirm count, so prefetch = concurrency would
        leave handlers idle during every confirm."""
        if self._prefetch is not None:
            return self._prefetch
        return min(65_535, self.concurrency * PREFETCH_PER_SLOT)

    @property
    def interrupted(self) -> bool:
        """Stopped at once (second SIGINT, or stop with grace 0) rather than gracefully."""
        return self._hurry.is_set()

    @property
    def busy_threads(self) -> int:
        """Threaded handlers still running, even abandoned ones (threads cannot be
        interrupted; the process cannot exit normally before they return)."""
        return self._threads_busy

    # --- run / stop ------------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True) -> None:
        """Work until `stop()` or a signal: SIGTERM and a first SIGINT stop gracefully, a
        second SIGINT stops at once. Reconnects with backoff when the broker goes away."""
        if self._done.is_set() or self._slots is not None:
            raise RuntimeError("a Worker runs once; make a new one (see configured())")
        self._slots = asyncio.Semaphore(self.concurrency)
        if self.handlers.has_sync:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="ojs-worker")
        loop = asyncio.get_running_loop()
        if handle_signals:
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        try:
            await self._reconnect_loop()
        finally:
            if handle_signals:
                loop.remove_signal_handler(signal.SIGTERM)
                loop.remove_signal_handler(signal.SIGINT)
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._done.set()

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop consuming, let running jobs finish for up to `grace_period` seconds (default:
        the worker's), then close; unfinished deliveries go back to their queues."""
        self._grace_override = grace_period
        if grace_period is not None and grace_period <= 0:
            self._hurry.set()
        self._stop.set()
        if self._slots is not None:
            await self._done.wait()

    def _on_sigterm(self) -> None:
        log.info("SIGTERM: stopping after running jobs (grace %.0fs)", self.grace_period)
        self._stop.set()

    def _on_sigint(self) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            log.info("SIGINT: stopping after running jobs; press Ctrl-C again to stop now")
            self._stop.set()
        else:
            log.warning("second SIGINT: stopping now; unfinished jobs return to their queues")
            self._hurry.set()
            self._stop.set()

    async def _reconnect_loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                connection = await connect(self.url, name=self.connection_name, attempts=1)
                session = await self._open_session(connection)
            except TopologyMismatch:
                raise
            except (*PUBLISH_ERRORS, OjsError) as exc:
                attempt += 1
                delay = backoff_seconds(attempt)
                message = exc.message if isinstance(exc, OjsError) else repr(exc)
                log.warning(
                    "cannot start consuming from %s: %s; retry %d in %.1fs",
                    redact(self.url), message, attempt, delay,
                )  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue
            if attempt:
                self.stats.reconnections += 1
            attempt = 0
            lost = await self._serve(session)
            if lost:
                attempt = 1
                log.warning("lost the broker connection; reconnecting")

    async def _open_session(self, connection: AbstractConnection) -> _Session:
        try:
            publisher = await connection.channel(
                publisher_confirms=True, frame_buffer_size=frames.CONFIRM_FRAME_BUFFER
            )
            pipe = Pipe(publisher, confirm_timeout=self.publish_timeout)
            await announce(pipe, self.topology, self.queues, worker_id=self.worker_id)
            replies = ReplyRouter()
            await publisher.basic_consume(REPLY_TO, replies.on_message, no_ack=True)
            consumer = await connection.channel(
                publisher_confirms=False,
                frame_buffer_size=frames.consumer_frame_buffer(self.prefetch),
            )
            session = _Session(connection, pipe, consumer, replies=replies)
            session.reports = ReportBatcher(
                functools.partial(self._send_reports, pipe),
                functools.partial(self._reports_settled, session),
                window=self.report_batch_ms / 1000,
                max_reports=self.report_batch_max,
                capacity=self.prefetch,
            )
            await consumer.basic_qos(prefetch_count=self.prefetch)
            await self._listen_for_cancels(session)
            for queue in self.queues:
                await self._consume(session, queue)
            consumer.on_consumer_cancel_callbacks.add(
                lambda frame: self._broker_cancelled(session, frame)
            )
            session.spawn(self._heartbeats(session))  # also sends ctx.progress reports
        except BaseException:
            await connection.close()
            raise
        self._session = session
        self.consuming.set()
        log.info(
            "worker %s consuming %s (concurrency %d)",
            self.worker_id, ", ".join(self.queues), self.concurrency,
        )  # fmt: skip
        return session

    async def _consume(self, session: _Session, queue: str) -> None:
        async def on_delivery(message: DeliveredMessage) -> None:
            await self._on_delivery(session, queue, message)

        ok = await session.consumer.basic_consume(
            self.topology.job_queue(queue), on_delivery, no_ack=False
        )
        session.tags[ok.consumer_tag or ""] = queue

    async def _listen_for_cancels(self, session: _Session) -> None:
        """Exclusive, auto-delete, server-named queue bound with `cancel.{q}` for each queue;
        the exchange is declared (same arguments as the daemon's) in case it is not yet."""
        channel = session.consumer
        exchange = self.topology.workers_exchange
        try:
            await channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise TopologyMismatch(
                f"exchange {exchange} exists with other arguments ({exc})"
            ) from None
        declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
        name = declared.queue or ""

        for queue in self.queues:
            await channel.queue_bind(
                name, exchange, routing_key=protocol.WORKER_CANCEL_PREFIX + queue
            )
        await channel.basic_consume(name, self._on_cancel_message, no_ack=True)

    def _broker_cancelled(self, session: _Session, frame: Basic.Cancel) -> None:
        """The broker cancelled a consumer (its queue was deleted): re-declare and consume it
        again after a backoff (AMQP-027)."""
        queue = session.tags.pop(frame.consumer_tag or "", None)
        if queue is not None and not session.stopping:
            log.warning("the broker cancelled the consumer of queue %s; re-subscribing", queue)
            session.spawn(self._resubscribe(session, queue))

    async def _resubscribe(self, session: _Session, queue: str) -> None:
        attempt = 0
        while not session.stopping and not session.connection.is_closed:
            attempt += 1
            await asyncio.sleep(backoff_seconds(attempt))
            try:
                await announce(session.pipe, self.topology, [queue], worker_id=self.worker_id)
                await self._consume(session, queue)
                return
            except (*PUBLISH_ERRORS, OjsError) as exc:
                log.warning("re-subscribing to %s failed (%r); retry %d", queue, exc, attempt)

    async def _serve(self, session: _Session) -> bool:
        """Until stop (drain, close: False) or the connection is lost (True)."""
        stop = asyncio.ensure_future(self._stop.wait())
        channels = (session.pipe.channel, session.consumer)
        watched = [stop, session.connection.closing, *(c.closing for c in channels)]
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        self.consuming.clear()
        healthy = not (session.connection.is_closed or any(c.is_closed for c in channels))
        if self._stop.is_set() and healthy:
            await self._drain(session)
            return False
        if session.consumer.is_closed and not session.connection.is_closed:
            log.warning(
                "the broker closed the consumer channel (%s); running jobs are given up (their "
                "deliveries are back in their queues); starting over",
                _closing_reason(session.consumer),
            )  # fmt: skip
        # Lost the connection, the channel reports go through (nothing can be finished
        # without it), or the consumer's channel (a job held past the broker's
        # consumer_timeout, typically): start over on a new connection.
        self._abandon(session)
        with contextlib.suppress(*PUBLISH_ERRORS):
            await session.connection.close()
        return not self._stop.is_set()

    async def _drain(self, session: _Session) -> None:
        """Graceful shutdown: Basic.Cancel, give unstarted deliveries back, wait for running
        jobs up to the grace period, send the pending reports and ack what they cover, then
        close (what is still unacked is requeued)."""
        session.stopping = True
        for tag in list(session.tags):
            with contextlib.suppress(*PUBLISH_ERRORS):
                await session.consumer.basic_cancel(tag)
        for task in list(session.waiting):
            task.cancel()
        grace = self.grace_period if self._grace_override is None else self._grace_override
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, grace)
        while session.running and not self._hurry.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            tasks: set[asyncio.Future[Any]] = {
                r.task for r in session.running.values() if r.task is not None
            }
            hurry = asyncio.ensure_future(self._hurry.wait())
            tasks.add(hurry)
            await asyncio.wait(tasks, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            hurry.cancel()
        if session.running:
            log.warning(
                "%d jobs still running at shutdown; they return to their queues",
                len(session.running),
            )
        self._abandon(session, reports=False)
        await asyncio.sleep(0)  # let cancelled handlers unwind before the channel goes
        if not self._hurry.is_set() and not await session.reports.drain(self.publish_timeout + 1.0):
            log.warning("reports still unconfirmed at shutdown; their jobs will run again")
        session.reports.abandon()
        with contextlib.suppress(*PUBLISH_ERRORS):
            await session.pipe.flush()  # the last acks reach the socket before the close
            await session.connection.close()

    def _abandon(self, session: _Session, *, reports: bool = True) -> None:
        """Give up running jobs: no report, no ack (their deliveries die with the channel);
        with `reports`, also the outcomes waiting for a batch."""
        session.stopping = True
        session.abandoned = True
        session.replies.fail_all(OjsError("the connection is gone"))
        if reports:
            session.reports.abandon()
        for running in session.running.values():
            if running.task is not None:
                running.task.cancel()  # a threaded handler runs on; only its wait ends
        for task in list(session.waiting) + list(session.background):
            task.cancel()

    # --- cancellation ----------------------------------------------------------------------

    async def _on_cancel_message(self, message: DeliveredMessage) -> None:
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            log.warning("ignoring an unreadable cancel message: %r", message.body[:200])
            return
        job_id = body.get("job_id") if isinstance(body, dict) else None
        if isinstance(job_id, str):
            self.cancel_local(job_id)

    def cancel_local(self, job_id: str) -> None:
        """Remember `job_id` as cancelled and interrupt it if it runs here."""
        self._cancelled.add(job_id)
        session = self._session
        if session is None:
            return
        for running in session.running.values():
            if running.ctx.id != job_id:
                continue
            running.ctx.cancel_requested = True
            if running.is_async and running.in_handler and running.task is not None:
                running.task.cancel()

    # --- one delivery ----------------------------------------------------------------------

    async def _on_delivery(self, session: _Session, queue: str, message: DeliveredMessage) -> None:
        delivery = message.delivery
        assert isinstance(delivery, Basic.Deliver)
        tag = delivery.delivery_tag or 0
        channel = message.channel
        if session.stopping:
            await _settle(channel.basic_reject(tag, requeue=True))
            return
        properties = message.header.properties
        headers = properties.headers or {}
        ref = codec.read_ref(headers, properties.message_id)
        if ref.job_id is not None and ref.job_id in self._cancelled:
            self.stats.dropped += 1
            await session.pipe.ack(channel, tag)
            return
        try:
            envelope = orjson.loads(message.body)
            if not isinstance(envelope, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            # Unreadable: discard into the dead-letter queue, where the daemon archives it.
            log.error("discarding an unreadable job on %s: %s", queue, exc)
            self.stats.dropped += 1
            await _settle(channel.basic_nack(tag, requeue=False, wait=False))
            return
        job_id = ref.job_id or str(envelope.get("id", ""))
        if job_id in self._cancelled:
            self.stats.dropped += 1
            await session.pipe.ack(channel, tag)
            return
        if expired(envelope, self._clock()):
            self.stats.expired += 1
            await session.pipe.ack(channel, tag)
            return
        args = envelope.get("args")
        ctx = JobContext(
            id=job_id,
            type=str(envelope.get("type", properties.message_type or "")),
            queue=queue,
            args=args if isinstance(args, list) else [],
            attempt=attempt_of(headers, envelope),
            worker_id=self.worker_id,
            envelope=envelope,
        )
        if not await self._acquire_slot(session, tag, channel):
            return
        try:
            lost = lost_deliveries(headers)
            if lost and not await self._may_restart(session, tag, ctx, ref.copy, message, lost):
                return
            await self._execute(session, tag, channel, ctx, ref.copy, message.body)
        finally:
            assert self._slots is not None
            self._slots.release()

    async def _may_restart(
        self, session: _Session, tag: int, ctx: JobContext, copy: int | None,
        message: DeliveredMessage, lost: int,
    ) -> bool:  # fmt: skip
        """A copy that went back to its queue `lost` times unfinished: earlier attempts may
        have died with their workers (a job that kills its worker would otherwise loop for
        ever). Ask the daemon, which counts those attempts, before running it: run only if it
        answers the job active (then at its attempt). Without an answer, judge by the
        delivery count alone, which also counts copies only prefetched by a worker that
        died (docs/sdk.md, "Jobs that kill their worker")."""
        body = control.restart(ctx.id, self.worker_id, copy, message.body, lost)
        try:
            answer = await self._ask(session, ctx.queue, body)
        except OjsError as exc:
            if session.abandoned:
                return False  # the delivery died with the connection
            log.warning("the daemon did not answer for redelivered job %s (%s); judging by its "
                        "delivery count", ctx.id, exc.message)  # fmt: skip
            headers = message.header.properties.headers or {}
            spent, limit = attempts_spent(headers, ctx.envelope)
            if 0 < limit <= spent:
                self._lost(session, tag, ctx, copy, message.body, spent, limit, lost)
                return False
            return True
        job = answer.get("job")
        state = job.get("state") if isinstance(job, dict) else None
        if state != "active":
            # Finished meanwhile: exhausted by lost attempts (discarded), or cancelled,
            # completed, or a stale copy. The daemon's record is the outcome: ack.
            if state == "discarded":
                self.stats.worker_lost += 1
                log.warning("job %s came back with its attempts spent on lost workers: "
                            "discarded (worker_lost), not run again", ctx.id)  # fmt: skip
            else:
                self.stats.dropped += 1
            await session.pipe.ack(message.channel, tag)
            return False
        attempt = job.get("attempt") if isinstance(job, dict) else None
        if isinstance(attempt, int) and attempt >= 1:
            ctx.attempt = attempt
        return True

    async def _ask(self, session: _Session, queue: str, body: bytes) -> dict[str, Any]:
        """A control message with a reply (direct reply-to), within `publish_timeout`."""
        return await session.replies.call(
            session.pipe, body, exchange=self.topology.direct_exchange,
            routing_key=self._report_keys.get(queue) or CONTROL_KEY_PREFIX + queue,
            properties=control.properties(protocol.HEARTBEAT), timeout_s=self.publish_timeout,
            timed_out=lambda: OjsError(f"no answer within {self.publish_timeout:g}s"),
        )  # fmt: skip

    def _lost(
        self, session: _Session, tag: int, ctx: JobContext, copy: int | None, body: bytes,
        spent: int, limit: int, lost: int,
    ) -> None:  # fmt: skip
        """The job came back after its workers died with it on every attempt it had (by the
        delivery count): running it again could loop for ever. Report the last lost attempt
        as failed instead, so the daemon applies `on_exhaustion`; acked once the report is
        confirmed, like any outcome."""
        self.stats.worker_lost += 1
        error = control.worker_lost_error(spent, limit, lost)
        ctx.attempt = spent
        report, kind = self._report(ctx, copy, self._clock(), body, False, error)
        log.warning("job %s came back with all %d attempts spent on lost workers; reporting "
                    "it failed (worker_lost)", ctx.id, limit)  # fmt: skip
        session.reports.add(
            self._report_keys.get(ctx.queue) or CONTROL_KEY_PREFIX + ctx.queue,
            Outcome(tag, ctx.id, kind, report),
        )

    async def _acquire_slot(self, session: _Session, tag: int, channel: AbstractChannel) -> bool:
        """Wait for one of `concurrency` slots (several queues share them); a stop meanwhile
        hands the delivery back to its queue."""
        slots = self._slots
        assert slots is not None
        if not slots.locked():
            await slots.acquire()
            return True
        task = asyncio.current_task()
        assert task is not None
        session.waiting.add(task)
        try:
            await slots.acquire()
        except asyncio.CancelledError:
            if not session.stopping:
                raise
            task.uncancel()
            if not session.abandoned:
                await _settle(channel.basic_reject(tag, requeue=True))
            return False
        finally:
            session.waiting.discard(task)
        if session.stopping:
            slots.release()
            await _settle(channel.basic_reject(tag, requeue=True))
            return False
        return True

    async def _execute(
        self,
        session: _Session,
        tag: int,
        channel: AbstractChannel,
        ctx: JobContext,
        copy: int | None,
        body: bytes,
    ) -> None:
        registered = self.handlers.lookup(ctx.type)
        running = _Running(
            ctx, asyncio.current_task(), registered.is_async if registered else True, body
        )
        session.running[tag] = running
        started = self._clock()
        running.next_beat = asyncio.get_running_loop().time() + self.heartbeat_interval
        try:
            ok, outcome = await self._call_handler(session, running, registered)
            running.finished = True
            if session.abandoned:
                return  # the delivery died with its channel; the job will run again
            if ctx.cancel_requested:
                # Cancelled while running: the daemon already says "cancelled", and would
                # ignore a report. The delivery is finished with.
                self.stats.cancelled += 1
                await session.pipe.ack(channel, tag)
                return
            report, kind = self._report(ctx, copy, started, body, ok, outcome)
            # Acked by _reports_settled once the report (alone or batched) is confirmed.
            session.reports.add(
                self._report_keys.get(ctx.queue) or CONTROL_KEY_PREFIX + ctx.queue,
                Outcome(tag, ctx.id, kind, report),
            )
        finally:
            running.finished = True
            session.running.pop(tag, None)

    async def _call_handler(
        self, session: _Session, running: _Running, registered: Registered | None
    ) -> tuple[bool, Any]:
        """(True, result) or (False, error dict). Re-raises cancellation that is not a job
        cancel (shutdown, lost connection)."""
        ctx = running.ctx
        if registered is None:
            return False, control.unknown_type_error(ctx.type, self.handlers)
        running.in_handler = True
        limit = ctx.envelope.get("timeout_ms")
        deadline: asyncio.Timeout | None = None
        try:
            if registered.is_async and isinstance(limit, int) and limit > 0:
                async with asyncio.timeout(limit / 1000) as deadline:
                    return True, await registered.fn(ctx)
            if registered.is_async:
                return True, await registered.fn(ctx)
            loop = asyncio.get_running_loop()
            return True, await loop.run_in_executor(self._pool, self._in_thread, registered.fn, ctx)
        except asyncio.CancelledError:
            task = running.task
            if ctx.cancel_requested and not session.abandoned and task is not None:
                task.uncancel()
                return False, None
            raise
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
                return False, control.timeout_error(limit)
            return False, control.error_of(exc)
        except Exception as exc:
            return False, control.error_of(exc)
        finally:
            running.in_handler = False

    def _in_thread(self, fn: Handler, ctx: JobContext) -> Any:
        with self._threads_lock:
            self._threads_busy += 1
        try:
            return fn(ctx)
        finally:
            with self._threads_lock:
                self._threads_busy -= 1

    def _report(
        self, ctx: JobContext, copy: int | None, started: int, body: bytes, ok: bool, outcome: Any
    ) -> tuple[bytes, str]:
        common: dict[str, Any] = {
            "job_id": ctx.id, "worker_id": self.worker_id, "copy": copy,
            "attempt": ctx.attempt, "started_at_ms": started, "envelope": body,
        }  # fmt: skip
        if ok:
            try:
                return control.completed_report(result=outcome, **common), protocol.COMPLETED
            except (TypeError, orjson.JSONEncodeError) as exc:
                outcome = {
                    "code": control.UNSERIALIZABLE_RESULT,
                    "message": f"the handler's result is not JSON: {exc}",
                    "type": type(exc).__name__,
                }
        return control.failed_report(error=outcome, **common), protocol.FAILED

    def _send_reports(
        self, pipe: Pipe, routing_key: str, body: bytes, kind: str, settled: Settled
    ) -> None:
        pipe.send(
            body,
            exchange=self.topology.direct_exchange,
            routing_key=routing_key,
            properties=control.properties(kind),
            settled=settled,
        )

    def _reports_settled(
        self, session: _Session, outcomes: list[Outcome], error: OjsError | None
    ) -> None:
        """A report message was confirmed: ack every delivery it covers. Or it was not:
        none of them is acked; after a pause they go back to their queue and run again,
        rather than lose their outcome (the daemon drops a duplicate report by its copy)."""
        tags = [outcome.delivery_tag for outcome in outcomes]
        if error is None:
            completed = sum(1 for outcome in outcomes if outcome.kind == protocol.COMPLETED)
            self.stats.completed += completed
            self.stats.failed += len(outcomes) - completed
            if len(outcomes) > 1:
                self.stats.report_batches += 1
            session.pipe.ack_many(session.consumer, tags)
            return
        self.stats.report_failures += len(outcomes)
        log.error(
            "could not report %d jobs (%s; first %s); returning them to their queue",
            len(outcomes), error.message, outcomes[0].job_id,
        )  # fmt: skip
        if not session.abandoned:
            asyncio.get_running_loop().call_later(
                REPORT_RETRY_PAUSE_S, self._hand_back, session, tags
            )

    @staticmethod
    def _hand_back(session: _Session, tags: list[int]) -> None:
        if not session.abandoned:
            session.pipe.reject_many(session.consumer, tags)

    # --- heartbeats ------------------------------------------------------------------------

    async def _heartbeats(self, session: _Session) -> None:
        """One ticker for all running jobs (cheaper than a timer per job): a job that has run
        `heartbeat_interval` since its start or last beat gets a heartbeat."""
        loop = asyncio.get_running_loop()
        beats = self.heartbeat_interval > 0
        every = PROGRESS_INTERVAL_S / 2  # a report waits at most this past its second
        tick = max(0.01, min(every, self.heartbeat_interval / 4)) if beats else every
        while not session.abandoned:
            await asyncio.sleep(tick)
            now = loop.time()
            for running in list(session.running.values()):
                if running.finished:
                    continue
                report = running.ctx.pending_progress
                if report is not None and running.next_progress <= now:
                    # A progress report is a heartbeat too: it stands in for the next beat.
                    running.ctx.pending_progress = None
                    running.next_progress = now + PROGRESS_INTERVAL_S
                    running.next_beat = now + self.heartbeat_interval
                    session.spawn(self._send_heartbeat(session, running, report))
                elif beats and running.next_beat <= now:
                    running.next_beat = now + self.heartbeat_interval
                    session.spawn(self._send_heartbeat(session, running))

    async def _send_heartbeat(
        self, session: _Session, running: _Running, report: dict[str, Any] | None = None
    ) -> None:
        """Until one is confirmed, a job's heartbeats carry its envelope: the daemon may never
        have seen a job pushed by binding PUSH, and adopts it from the beat. With `report`,
        the beat is an `ojs.control.progress`."""
        ctx = running.ctx
        envelope = None if running.introduced else running.body
        if report is None:
            kind, body = protocol.HEARTBEAT, control.heartbeat(ctx.id, self.worker_id, envelope)
        else:
            kind, body = (
                protocol.PROGRESS,
                control.progress(ctx.id, self.worker_id, report, envelope),
            )
        try:
            await session.pipe.publish(
                body,
                exchange=self.topology.direct_exchange,
                routing_key=self._report_keys.get(ctx.queue) or CONTROL_KEY_PREFIX + ctx.queue,
                properties=control.properties(kind),
            )
        except OjsError as exc:
            log.warning("heartbeat for job %s failed: %s", ctx.id, exc.message)
        else:
            running.introduced = True


def _closing_reason(channel: AbstractChannel) -> str:
    closing = channel.closing
    if not closing.done() or closing.cancelled() or closing.exception() is None:
        return "closed"
    return str(closing.exception())


async def _settle(call: Any) -> None:
    """Ack/nack/reject; if the channel is gone the delivery is void and will be redelivered."""
    try:
        await call
    except PUBLISH_ERRORS as exc:
        log.debug("settling a delivery failed (%r); the broker will redeliver it", exc)
