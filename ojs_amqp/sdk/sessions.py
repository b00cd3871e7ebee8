"""One connection's worth of a worker: opening it (announce, consumers, the cancel queue),
serving it until stop or loss, draining it gracefully, and the heartbeat ticker of its
running jobs. Its deliveries are void once it is gone."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from pamqp.commands import Basic

from ojs_amqp.amqp import frames, protocol
from ojs_amqp.amqp.failures import PUBLISH_ERRORS
from ojs_amqp.amqp.pipe import Pipe
from ojs_amqp.amqp.reconnect import Stopped, backoff_seconds, with_backoff
from ojs_amqp.amqp.topology import CONTROL_KEY_PREFIX
from ojs_amqp.errors import OjsError, TopologyMismatch
from ojs_amqp.sdk import control
from ojs_amqp.sdk.announce import announce
from ojs_amqp.sdk.context import JobContext
from ojs_amqp.sdk.reports import ReportBatcher
from ojs_amqp.sdk.rpc import REPLY_TO, ReplyRouter
from ojs_amqp.supervisor import Supervisor

if TYPE_CHECKING:
    from ojs_amqp.sdk.worker import Worker

log = logging.getLogger("ojs_amqp.sdk.worker")

#: A job's progress reports (ctx.progress) go out at most this often; the latest wins.
PROGRESS_INTERVAL_S = 1.0


@dataclass(slots=True, eq=False)
class Running:
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
class Session:
    """One connection's worth of state: its deliveries are void once it is gone."""

    connection: AbstractConnection
    pipe: Pipe
    consumer: AbstractChannel
    #: Set right after construction (it calls back into the session).
    reports: ReportBatcher = field(init=False)
    tags: dict[str, str] = field(default_factory=dict)  # consumer tag -> queue
    #: Answers to the restart questions of redelivered jobs (direct reply-to on `pipe`).
    replies: ReplyRouter = field(default_factory=ReplyRouter)
    running: dict[int, Running] = field(default_factory=dict)  # delivery tag -> job
    waiting: set[asyncio.Task[Any]] = field(default_factory=set)
    #: Heartbeats, re-subscribing, the ticker: failures logged and counted, never fatal.
    background: Supervisor = field(default_factory=lambda: Supervisor(log))
    stopping: bool = False
    #: Set when running jobs are given up (grace over, or an immediate stop).
    abandoned: bool = False

    def spawn(self, coro: Any, name: str = "worker-task") -> None:
        self.background.spawn(coro, name)


class Sessions:
    """Opens, serves and closes the worker's sessions (one per connection)."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker

    async def open(self, connection: AbstractConnection) -> Session:
        try:
            publisher = await connection.channel(
                publisher_confirms=True, frame_buffer_size=frames.CONFIRM_FRAME_BUFFER
            )
            pipe = Pipe(publisher, confirm_timeout=self.w.publish_timeout)
            await announce(pipe, self.w.topology, self.w.queues, worker_id=self.w.worker_id)
            replies = ReplyRouter()
            await publisher.basic_consume(REPLY_TO, replies.on_message, no_ack=True)
            consumer = await connection.channel(
                publisher_confirms=False,
                frame_buffer_size=frames.consumer_frame_buffer(self.w.prefetch),
            )
            session = Session(connection, pipe, consumer, replies=replies)
            session.reports = ReportBatcher(
                functools.partial(self.w._send_reports, pipe),
                functools.partial(self.w._deliveries.reports_settled, session),
                window=self.w.report_batch_ms / 1000,
                max_reports=self.w.report_batch_max,
                capacity=self.w.prefetch,
            )
            await consumer.basic_qos(prefetch_count=self.w.prefetch)
            await self._listen_for_cancels(session)
            for queue in self.w.queues:
                await self._consume(session, queue)
            consumer.on_consumer_cancel_callbacks.add(
                lambda frame: self._broker_cancelled(session, frame)
            )
            session.spawn(
                self._heartbeats(session), "heartbeats"
            )  # also sends ctx.progress reports
        except BaseException:
            await connection.close()
            raise
        self.w._session = session
        self.w.consuming.set()
        log.info(
            "worker %s consuming %s (concurrency %d)",
            self.w.worker_id, ", ".join(self.w.queues), self.w.concurrency,
        )  # fmt: skip
        return session

    async def _consume(self, session: Session, queue: str) -> None:
        deliver = self.w._deliveries.on_delivery

        async def on_delivery(message: DeliveredMessage) -> None:
            await deliver(session, queue, message)

        ok = await session.consumer.basic_consume(
            self.w.topology.job_queue(queue), on_delivery, no_ack=False
        )
        session.tags[ok.consumer_tag or ""] = queue

    async def _listen_for_cancels(self, session: Session) -> None:
        """Exclusive, auto-delete, server-named queue bound with `cancel.{q}` for each queue;
        the exchange is declared (same arguments as the daemon's) in case it is not yet."""
        channel = session.consumer
        exchange = self.w.topology.workers_exchange
        try:
            await channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise TopologyMismatch(
                f"exchange {exchange} exists with other arguments ({exc})"
            ) from None
        declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
        name = declared.queue or ""

        for queue in self.w.queues:
            await channel.queue_bind(
                name, exchange, routing_key=protocol.WORKER_CANCEL_PREFIX + queue
            )
        await channel.basic_consume(name, self.w._on_cancel_message, no_ack=True)

    def _broker_cancelled(self, session: Session, frame: Basic.Cancel) -> None:
        """The broker cancelled a consumer (its queue was deleted): re-declare and consume it
        again after a backoff (AMQP-027)."""
        queue = session.tags.pop(frame.consumer_tag or "", None)
        if queue is not None and not session.stopping:
            log.warning("the broker cancelled the consumer of queue %s; re-subscribing", queue)
            session.spawn(self._resubscribe(session, queue), f"resubscribe {queue}")

    async def _resubscribe(self, session: Session, queue: str) -> None:
        """Announce the queue and consume it again, after a backoff, retried with backoff
        while the session lasts (the loop is amqp/reconnect.py's)."""

        async def step() -> None:
            await announce(session.pipe, self.w.topology, [queue], worker_id=self.w.worker_id)
            await self._consume(session, queue)

        def failed(attempt: int, exc: BaseException, delay: float) -> None:
            log.warning("re-subscribing to %s failed (%r); retry %d", queue, exc, attempt - 1)

        await asyncio.sleep(backoff_seconds(1))
        with contextlib.suppress(Stopped):
            await with_backoff(
                step, retryable=lambda exc: isinstance(exc, (*PUBLISH_ERRORS, OjsError)),
                on_failure=failed, first_attempt=2,
                going_on=lambda: not session.stopping and not session.connection.is_closed,
            )  # fmt: skip

    async def serve(self, session: Session) -> bool:
        """Until stop (drain, close: False) or the connection is lost (True)."""
        stop = asyncio.ensure_future(self.w._stop.wait())
        channels = (session.pipe.channel, session.consumer)
        watched = [stop, session.connection.closing, *(c.closing for c in channels)]
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        self.w.consuming.clear()
        healthy = not (session.connection.is_closed or any(c.is_closed for c in channels))
        if self.w._stop.is_set() and healthy:
            await self._drain(session)
            return False
        if session.consumer.is_closed and not session.connection.is_closed:
            log.warning(
                "the broker closed the consumer channel (%s); running jobs are given up (their "
                "deliveries are back in their queues); starting over",
                closing_reason(session.consumer),
            )  # fmt: skip
        # Lost the connection, the channel reports go through (nothing can be finished
        # without it), or the consumer's channel (a job held past the broker's
        # consumer_timeout, typically): start over on a new connection.
        self.abandon(session)
        with contextlib.suppress(*PUBLISH_ERRORS):
            await session.connection.close()
        return not self.w._stop.is_set()

    async def _drain(self, session: Session) -> None:
        """Graceful shutdown: Basic.Cancel, give unstarted deliveries back, wait for running
        jobs up to the grace period, send the pending reports and ack what they cover, then
        close (what is still unacked is requeued)."""
        session.stopping = True
        for tag in list(session.tags):
            with contextlib.suppress(*PUBLISH_ERRORS):
                await session.consumer.basic_cancel(tag)
        for task in list(session.waiting):
            task.cancel()
        grace = self.w.grace_period if self.w._grace_override is None else self.w._grace_override
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, grace)
        while session.running and not self.w._hurry.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            tasks: set[asyncio.Future[Any]] = {
                r.task for r in session.running.values() if r.task is not None
            }
            hurry = asyncio.ensure_future(self.w._hurry.wait())
            tasks.add(hurry)
            await asyncio.wait(tasks, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            hurry.cancel()
        if session.running:
            log.warning(
                "%d jobs still running at shutdown; they return to their queues",
                len(session.running),
            )
        self.abandon(session, reports=False)
        await asyncio.sleep(0)  # let cancelled handlers unwind before the channel goes
        if not self.w._hurry.is_set() and not await session.reports.drain(
            self.w.publish_timeout + 1.0
        ):
            log.warning("reports still unconfirmed at shutdown; their jobs will run again")
        session.reports.abandon()
        with contextlib.suppress(*PUBLISH_ERRORS):
            await session.pipe.flush()  # the last acks reach the socket before the close
            await session.connection.close()

    def abandon(self, session: Session, *, reports: bool = True) -> None:
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
        for task in list(session.waiting):
            task.cancel()
        session.background.cancel()

    # --- heartbeats ------------------------------------------------------------------------

    async def _heartbeats(self, session: Session) -> None:
        """One ticker for all running jobs (cheaper than a timer per job): a job that has run
        `heartbeat_interval` since its start or last beat gets a heartbeat."""
        loop = asyncio.get_running_loop()
        beats = self.w.heartbeat_interval > 0
        every = PROGRESS_INTERVAL_S / 2  # a report waits at most this past its second
        tick = max(0.01, min(every, self.w.heartbeat_interval / 4)) if beats else every
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
                    running.next_beat = now + self.w.heartbeat_interval
                    session.spawn(self._send_heartbeat(session, running, report), "progress")
                elif beats and running.next_beat <= now:
                    running.next_beat = now + self.w.heartbeat_interval
                    session.spawn(self._send_heartbeat(session, running), "heartbeat")

    async def _send_heartbeat(
        self, session: Session, running: Running, report: dict[str, Any] | None = None
    ) -> None:
        """Until one is confirmed, a job's heartbeats carry its envelope: the daemon may never
        have seen a job pushed by binding PUSH, and adopts it from the beat. With `report`,
        the beat is an `ojs.control.progress`."""
        ctx = running.ctx
        envelope = None if running.introduced else running.body
        if report is None:
            kind, body = protocol.HEARTBEAT, control.heartbeat(ctx.id, self.w.worker_id, envelope)
        else:
            kind, body = (
                protocol.PROGRESS,
                control.progress(ctx.id, self.w.worker_id, report, envelope),
            )
        try:
            await session.pipe.publish(
                body,
                exchange=self.w.topology.direct_exchange,
                routing_key=self.w._report_keys.get(ctx.queue) or CONTROL_KEY_PREFIX + ctx.queue,
                properties=control.properties(kind),
            )
        except OjsError as exc:
            log.warning("heartbeat for job %s failed: %s", ctx.id, exc.message)
        else:
            running.introduced = True


def closing_reason(channel: AbstractChannel) -> str:
    closing = channel.closing
    if not closing.done() or closing.cancelled() or closing.exception() is None:
        return "closed"
    return str(closing.exception())


async def settle_quietly(call: Any) -> None:
    """Ack/nack/reject; if the channel is gone the delivery is void and will be redelivered."""
    try:
        await call
    except PUBLISH_ERRORS as exc:
        log.debug("settling a delivery failed (%r); the broker will redeliver it", exc)
