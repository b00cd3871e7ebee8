"""The daemon's link to RabbitMQ: connections, confirmed publishing and consumers, kept up
by our own reconnect loop.

Two connections (publishing and consuming) so broker flow control on publishers never slows
consumer acks. aio-pika's robust connection retries on a fixed interval; the binding asks for
exponential backoff with jitter (AMQP-025), so the loop is ours (amqp/reconnect.py):
reconnect, re-declare everything, re-register every consumer (AMQP-026), and tell the engine
its deliveries are gone. Broker is the facade and holds the state; its parts do the work:
amqp/links.py (connections), stalls.py (stalled waits and the probe), declarations.py,
consumers.py and queue_admin.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from ojs_amqp.amqp import _aiormq, frames
from ojs_amqp.amqp.bounded import BrokerTimeouts, stalled, within
from ojs_amqp.amqp.codec import Outgoing
from ojs_amqp.amqp.consumers import Consumers, ConsumerState, DeliveryHandler
from ojs_amqp.amqp.declarations import FRESH_QUEUE_S as FRESH_QUEUE_S
from ojs_amqp.amqp.declarations import Declarations
from ojs_amqp.amqp.failures import CONNECTION_ERRORS, PUBLISH_ERRORS
from ojs_amqp.amqp.links import Links
from ojs_amqp.amqp.observer import BrokerObserver as BrokerObserver  # importers' old path
from ojs_amqp.amqp.observer import SupervisionObserver, _NoObserver
from ojs_amqp.amqp.pipe import Pipe, Settler
from ojs_amqp.amqp.queue_admin import DELETE_CHANNELS, QueueAdmin
from ojs_amqp.amqp.reconnect import ConnectionLoop, Stopped, with_backoff
from ojs_amqp.amqp.reconnect import backoff_seconds as backoff_seconds  # importers' old path
from ojs_amqp.amqp.stalls import STALL_MEMORY_S as STALL_MEMORY_S
from ojs_amqp.amqp.stalls import StallWatch
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.errors import (
    BackendUnavailable,
    BrokerStalled,
    PublishRejected,
    QueueFull,
    Unroutable,
    describe,
)
from ojs_amqp.errors import TopologyMismatch as TopologyMismatch  # its old home, still importable
from ojs_amqp.logs import redact
from ojs_amqp.supervisor import Supervisor
from ojs_amqp.tls import is_permanent_tls_failure

log = logging.getLogger("ojs_amqp.broker")

__all__ = ["Broker", "BrokerObserver", "DeliveryHandler", "TopologyMismatch", "backoff_seconds"]
T = TypeVar("T")


FRESH_QUEUE_RETRY_DELAYS_S = (0.02, 0.05, 0.1, 0.2, 0.4)


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, CONNECTION_ERRORS)


def _worth_retrying(exc: BaseException) -> bool:
    """Connection errors are retried at start, except TLS verdicts that no retry can change
    (a certificate the other side refuses): those stop the daemon at once."""
    return isinstance(exc, CONNECTION_ERRORS) and not is_permanent_tls_failure(exc)


class Broker:
    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        timeouts: BrokerTimeouts | None = None,
        connection_name: str = "ojs-amqp",
        observer: BrokerObserver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._url = url
        self._ssl_context = ssl_context
        self.topology = topology
        self.timeouts = timeouts or BrokerTimeouts()
        self._name = connection_name
        self._observer: BrokerObserver = observer or _NoObserver()
        self._exchange_kinds = {
            topology.direct_exchange: "direct",
            topology.dlx_exchange: "dlx",
            topology.delay_exchange: "delay",
        }
        self._pub_conn: AbstractConnection | None = None
        self._con_conn: AbstractConnection | None = None
        #: Every confirmed publish goes through it, on a channel of its own.
        self._pipe: Pipe | None = None
        #: Acks and rejects of every delivery on the consume connection.
        self._settler: Settler | None = None
        self._notify_channel: AbstractChannel | None = None
        self._declared: dict[str, tuple[dict[str, Any], str, str]] = {}
        #: Until when a nack may come from a queue still electing its leader (FRESH_QUEUE_S).
        self._declared_recently_until = 0.0
        #: queue name -> QueueSpec.kind, for the consumed-deliveries metric
        self._kinds: dict[str, str] = {}
        self._consumers: dict[str, ConsumerState] = {}
        #: Idle channels for queue deletes, and how many deletes may run at once.
        self._spare_channels: list[aiormq.abc.AbstractChannel] = []
        self._delete_slots = asyncio.Semaphore(DELETE_CHANNELS)
        self._deleting = 0
        self._lost = asyncio.Event()
        #: Background work (restoring consumers, reopening the publisher) and the hooks
        #: run after broker events: failures logged and counted, never ending a loop.
        supervised = isinstance(self._observer, SupervisionObserver)
        self._supervisor = Supervisor(
            log,
            self._observer.background_failed if supervised else None,  # type: ignore[attr-defined]
        )
        self._watch_task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False
        self.reconnections = 0
        self.on_connection_lost: list[Callable[[], None]] = []
        self.on_reconnected: list[Callable[[], Awaitable[None]]] = []
        #: Called with the queue name once a consumer the broker cancelled (Basic.Cancel,
        #: e.g. the queue was deleted) consumes again: the messages it had are gone.
        self.on_consumer_restored: list[Callable[[str], Awaitable[None]]] = []
        #: Called with the queue name when the broker closes a consumer's channel while the
        #: connection lives on: every delivery that channel held is void (back in its queue).
        self.on_consumer_lost: list[Callable[[str], None]] = []
        self.server_version = "unknown"
        #: Why the broker link is degraded (a confirm, declare or RPC past its timeout), or None.
        self.stall: str | None = None
        #: kind of wait ("confirm", "declare", "rpc") -> why it stalled; `stall` joins them.
        self._stalls: dict[str, str] = {}
        #: kind -> when its stall is forgotten if no wait of that kind times out again.
        self._stall_expiry: dict[str, asyncio.TimerHandle] = {}
        #: The liveness check a stall starts (one at a time), see `_stalled`.
        self._probe: asyncio.Task[None] | None = None
        #: What the last probe concluded, logged once per stall episode.
        self._said: str | None = None
        # The parts: behaviour over the state above (one concern each).
        self._links = Links(self)
        self._stall_watch = StallWatch(self)
        self._declarations = Declarations(self)
        self._consumer_set = Consumers(self)
        self._queue_admin = QueueAdmin(self)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, attempts: int = 5) -> None:
        """Connect (retrying `attempts` times), declare the fixed topology, watch the link.

        Every failed attempt is one log line naming the broker and what it waited for; the
        last one's error is raised (the CLI turns it into exit 2)."""
        observer = self._observer
        _aiormq.report_at_start(
            observer.fast_path if isinstance(observer, SupervisionObserver) else None
        )
        frames.install()
        where = redact(self._url)

        def failed(attempt: int, exc: BaseException, delay: float) -> None:
            log.warning(
                "broker %s, attempt %d of %d failed: %s; next attempt in %.1fs",
                where, attempt, attempts, describe(exc), delay,
            )  # fmt: skip

        try:
            await with_backoff(
                self._links.connect, retryable=_worth_retrying, on_failure=failed, attempts=attempts
            )
        except Exception as exc:
            if _worth_retrying(exc):
                log.error(
                    "broker %s, attempt %d of %d failed: %s; giving up",
                    where, attempts, attempts, describe(exc),
                )  # fmt: skip
            raise
        loop: ConnectionLoop[None] = ConnectionLoop(
            self._links.connect, self._links.until_lost, retryable=_is_connection_error,
            on_failure=self._links.reconnect_failed, going_on=lambda: not self._closing,
            reconnected=self._links.reconnected, on_hook_failure=self._links.hook_failed,
        )  # fmt: skip
        self._watch_task = asyncio.create_task(loop.keep(None), name="broker-watch")

    async def close(self) -> None:
        self._closing = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        if self._probe is not None:
            self._probe.cancel()
        for conn in (self._con_conn, self._pub_conn):
            if conn is not None and not conn.is_closed:
                await self._links.close_connection(conn)
        self.connected = False

    # --- bounded waits and stalls ----------------------------------------------------------

    async def _waiting(self, kind: str, timeout_s: float, what: str, call: Awaitable[T]) -> T:
        """`call`, bounded by `timeout_s`; a timeout is a stall of `kind` (see `_stalled`),
        an answer ends that kind's stall."""
        try:
            result = await within(timeout_s, what, call)
        except BrokerStalled as exc:
            self._stall_watch.stalled(kind, exc)
            raise
        if self._stalls:
            self._stall_watch.answered(kind)
        return result

    async def _channel(self, conn: AbstractConnection) -> AbstractChannel:
        """A short-lived channel without confirms, opened within the channel timeout."""
        return await self._waiting(
            "rpc", self.timeouts.channel_s, "Channel.Open",
            conn.channel(publisher_confirms=False),
        )  # fmt: skip

    @contextlib.asynccontextmanager
    async def _short_lived(self, conn: AbstractConnection) -> AsyncIterator[AbstractChannel]:
        """A channel without confirms for a few requests, closed after them, but not after
        one that stalled: aiormq closes the channel of a request it gave up on by itself, and
        waiting for one more answer from a broker that gives none would double the wait."""
        channel = await self._channel(conn)
        try:
            yield channel
        except BrokerStalled:
            raise
        except BaseException:
            await self._close_channel(channel)
            raise
        await self._close_channel(channel)

    async def _close_channel(self, channel: AbstractChannel) -> None:
        if not channel.is_closed:
            await self._waiting("rpc", self.timeouts.rpc_s, "Channel.Close", channel.close())

    async def _retrying(
        self, what: str, step: Callable[[], Awaitable[None]], wanted: Callable[[], bool]
    ) -> bool:
        """Run `step` until it succeeds, with backoff, while the connection lives and
        `wanted()` holds (once the connection is gone the reconnect loop restores it all)."""

        def failed(attempt: int, exc: BaseException, delay: float) -> None:
            log.warning("could not %s (%r); next try in %.1fs", what, exc, delay)

        try:
            await with_backoff(
                step, retryable=lambda _: True, on_failure=failed,
                going_on=lambda: not self._closing and self.connected and wanted(),
            )  # fmt: skip
        except Stopped:
            return False
        return True

    # --- publishing ------------------------------------------------------------------------

    def _require_connection(self) -> None:
        if not self.connected or self._pipe is None or self._pipe.channel.is_closed:
            raise BackendUnavailable("the broker is not connected")

    async def publish(self, exchange: str, routing_key: str, message: Outgoing) -> None:
        """Publish with mandatory=True and wait for the broker's confirm.

        Raises BackendUnavailable when the broker cannot route it (return) or is unreachable,
        QueueFull when it refuses it (nack: a queue at its length limit); the caller must
        then not ack the current copy. Goes through the pipe: the publishes of one loop turn
        leave in one write.
        """
        started = time.perf_counter()
        retry_delays = iter(FRESH_QUEUE_RETRY_DELAYS_S)
        while True:
            self._require_connection()
            assert self._pipe is not None
            try:
                await self._pipe.publish(
                    message.body, exchange=exchange, routing_key=routing_key,
                    properties=message.properties,
                )  # fmt: skip
                if self._stalls:
                    self._stall_watch.answered("confirm")
                break
            except BrokerStalled as exc:  # no confirm in time: the caller answers 503
                self._stall_watch.stalled("confirm", exc)
                raise
            except Unroutable as exc:  # Basic.Return: no queue matched
                self._observer.returned()
                raise BackendUnavailable(f"the message could not be routed ({exc})") from None
            except PublishRejected:  # Basic.Nack: x-overflow=reject-publish, or no leader yet
                delay = next(retry_delays, None)
                if delay is not None and self._declared_recently_until > time.monotonic():
                    await asyncio.sleep(delay)
                    continue
                self._observer.returned()
                raise QueueFull(
                    f"the broker refused the message: queue {routing_key!r} is at its length "
                    "limit (or unavailable)",
                    details={"queue": routing_key},
                ) from None
            except BackendUnavailable:
                raise
            except PUBLISH_ERRORS as exc:
                raise BackendUnavailable(f"publishing failed: {exc!r}") from None
        kind = self._exchange_kinds.get(exchange, "other")
        self._observer.published(kind, time.perf_counter() - started)

    async def publish_nowait(self, exchange: str, routing_key: str, message: Outgoing) -> None:
        """Fire-and-forget publish (no confirm wait, not mandatory): for notifications such as
        events, where a lost message costs nothing and waiting would cost throughput."""
        self._require_connection()
        if self._notify_channel is None or self._notify_channel.is_closed:
            raise BackendUnavailable("the broker is not connected")
        channel = await self._notify_channel.get_underlay_channel()
        try:
            # aiormq bounds this itself and rolls back cleanly when the bound is hit
            await channel.basic_publish(
                message.body, exchange=exchange, routing_key=routing_key,
                properties=message.properties, mandatory=False, timeout=self.timeouts.rpc_s,
            )  # fmt: skip
        except TimeoutError:
            raise stalled("a notification publish", self.timeouts.rpc_s) from None

    # --- consuming -------------------------------------------------------------------------

    def _in_background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._supervisor.spawn(coro, name)

    def open_connections(self) -> int:
        return sum(1 for c in (self._pub_conn, self._con_conn) if c is not None and not c.is_closed)

    def open_channels(self) -> int:
        """Open AMQP channels on both connections (consumers, publishers, and any short-lived
        declare or ping channel at that moment)."""
        total = 0
        for conn in (self._pub_conn, self._con_conn):
            if conn is None or conn.is_closed or conn.transport is None:
                continue
            total += sum(1 for _ in _aiormq.open_channels(conn.transport.connection))
        return total

    def declared_queues(self) -> list[str]:
        return list(self._declared)

    # --- what the parts do, by the names the engine and the native edge call -------------

    async def ensure_job_queue(self, queue: str) -> None:
        """Declare what one OJS queue needs (job, dead-letter and control queue; idempotent)."""
        await self._declarations.ensure_job_queue(queue)

    async def consume(
        self, queue_name: str, arguments: dict[str, Any], prefetch: int, handler: DeliveryHandler
    ) -> None:
        """Consume `queue_name` with manual acks; the consumer is restored after reconnects."""
        await self._consumer_set.consume(queue_name, arguments, prefetch, handler)

    async def stop_consumer(self, queue_name: str) -> None:
        """Stop consuming one queue; its unacked deliveries return to it."""
        await self._consumer_set.stop_consumer(queue_name)

    async def cancel_consumer(self, queue_name: str, timeout_s: float = 5.0) -> None:
        """Basic.Cancel for one consumer, bounded (see Consumers.cancel_consumer)."""
        await self._consumer_set.cancel_consumer(queue_name, timeout_s)

    def consuming(self, queue_name: str) -> bool:
        return queue_name in self._consumers

    async def stop_consumers(self, exclude: set[str] | frozenset[str] = frozenset()) -> None:
        """Close every consumer channel (but those consuming `exclude`), together."""
        await self._consumer_set.stop_consumers(exclude)

    async def purge(self, queue_names: list[str]) -> None:
        await self._queue_admin.purge(queue_names)

    async def delete_queues(self, queue_names: list[str]) -> None:
        """Stop consuming queues, delete them and forget them (see QueueAdmin.delete_queues)."""
        await self._queue_admin.delete_queues(queue_names)

    async def delete_everything(self) -> None:
        """Delete every queue and exchange of this topology (tests clean up with this)."""
        await self._queue_admin.delete_everything()

    async def ready_count(self, queue_name: str) -> int:
        """Messages ready in a queue (a passive declare); 0 if it cannot be read."""
        return await self._queue_admin.ready_count(queue_name)

    async def ping(self, timeout_s: float | None = None) -> float:
        """Round-trip time to the broker in milliseconds (a channel and a passive declare),
        within `timeout_s` (default: the RPC timeout); past it BrokerStalled, and the stall
        is recorded like any other (health reports it, a probe checks the link)."""
        self._require_connection()
        assert self._pub_conn is not None
        start = time.perf_counter()
        bound = self.timeouts.rpc_s if timeout_s is None else timeout_s
        await self._waiting("rpc", bound, "a ping", self._stall_watch.round_trip(self._pub_conn))
        return (time.perf_counter() - start) * 1000
