"""The native AMQP worker: consume ojs.queue.{q}, run handlers, report, then ack.

Per delivery (docs/amqp-protocol.md, "Working"): drop it if the job was cancelled or has
expired; run the handler (async on the loop, plain functions in a thread pool); report
`ojs.report.completed` / `ojs.report.failed` to `control.{q}` with a confirm — outcomes that
finish close together share one `ojs.report.batch` (sdk/reports.py); then ack.
Jobs running longer than `heartbeat_interval` send `ojs.control.heartbeat`s. An exclusive
queue bound to ojs.exchange.workers (`cancel.{q}`) brings cancellations.

Talks to aiormq directly (no aio-pika objects per message). ojs_amqp.amqp.Broker is not
reused: it declares the daemon's fixed topology (the delay ladder) and opens two
connections; a worker needs neither. The pipe, frame-queue sizes and reconnect loop
(amqp/reconnect.py) of ojs_amqp/amqp/ are shared. Worker is the facade: its settings, stats
and run/stop; sdk/sessions.py opens and serves each connection, sdk/deliveries.py takes each
delivery from arrival to report, sdk/attempts.py judges attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from aiormq.abc import DeliveredMessage

from ojs_amqp.amqp import protocol
from ojs_amqp.amqp.failures import PUBLISH_ERRORS
from ojs_amqp.amqp.pipe import Pipe, Settled
from ojs_amqp.amqp.reconnect import ConnectionLoop
from ojs_amqp.amqp.topology import CONTROL_KEY_PREFIX, Topology
from ojs_amqp.clock import now_ms
from ojs_amqp.core.envelope import validate_queue
from ojs_amqp.errors import OjsError, TopologyMismatch
from ojs_amqp.logs import redact
from ojs_amqp.sdk import control
from ojs_amqp.sdk.attempts import attempt_of as attempt_of  # re-exported: the old home
from ojs_amqp.sdk.attempts import attempts_spent as attempts_spent
from ojs_amqp.sdk.attempts import expired as expired
from ojs_amqp.sdk.attempts import lost_deliveries as lost_deliveries
from ojs_amqp.sdk.attempts import max_attempts_of as max_attempts_of
from ojs_amqp.sdk.context import JobContext
from ojs_amqp.sdk.deliveries import REPORT_RETRY_PAUSE_S as REPORT_RETRY_PAUSE_S
from ojs_amqp.sdk.deliveries import Deliveries
from ojs_amqp.sdk.handlers import H, Handler, HandlerRegistry
from ojs_amqp.sdk.recent import RecentIds
from ojs_amqp.sdk.sessions import PROGRESS_INTERVAL_S as PROGRESS_INTERVAL_S
from ojs_amqp.sdk.sessions import Session, Sessions
from ojs_amqp.sdk.transport import DEFAULT_URL, connect

log = logging.getLogger("ojs_amqp.sdk.worker")

#: Default batching of reports (docs/sdk.md, "Batched reports"): at most this long after a
#: batch's first outcome, and this many reports (chosen with benchmarks/bench_sdk.py (b),
#: see docs/performance.md).
REPORT_BATCH_MS = 5.0
REPORT_BATCH_MAX = 100
#: Default prefetch = concurrency x this: a finished job's delivery stays unacked until its
#: (batched) report is confirmed, and must not keep the next job from arriving meanwhile.
PREFETCH_PER_SLOT = 3


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


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
        self._session: Session | None = None
        #: A connect failed, or the link was lost, since the last connect (stats).
        self._troubled = False
        self._sessions = Sessions(self)
        self._deliveries = Deliveries(self)
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
        """Connect with backoff, serve until stopped or the link is lost, again (the loop is
        ojs_amqp/amqp/reconnect.py's, shared with the daemon's Broker)."""
        loop: ConnectionLoop[Session] = ConnectionLoop(
            self._connect, self._serve, retryable=self._worth_retrying,
            on_failure=self._connect_failed, going_on=lambda: not self._stop.is_set(),
            pause=self._pause, reconnect_from=2,
        )  # fmt: skip
        await loop.run()

    async def _connect(self) -> Session:
        connection = await connect(self.url, name=self.connection_name, attempts=1)
        session = await self._sessions.open(connection)
        if self._troubled:  # connected after a failure or a loss: a reconnection
            self.stats.reconnections += 1
            self._troubled = False
        return session

    async def _serve(self, session: Session) -> bool:
        lost = await self._sessions.serve(session)
        if lost:
            self._troubled = True
            log.warning("lost the broker connection; reconnecting")
        return lost

    @staticmethod
    def _worth_retrying(exc: BaseException) -> bool:
        return isinstance(exc, (*PUBLISH_ERRORS, OjsError)) and not isinstance(
            exc, TopologyMismatch
        )

    def _connect_failed(self, attempt: int, exc: BaseException, delay: float) -> None:
        self._troubled = True
        message = exc.message if isinstance(exc, OjsError) else repr(exc)
        log.warning(
            "cannot start consuming from %s: %s; retry %d in %.1fs",
            redact(self.url), message, attempt, delay,
        )  # fmt: skip

    async def _pause(self, delay: float) -> None:
        """The backoff between attempts, cut short by a stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

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
