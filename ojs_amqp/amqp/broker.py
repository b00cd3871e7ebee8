"""Connections, channels, confirmed publishing and consumers, with our own reconnect loop.

Two connections (publishing and consuming) so broker flow control on publishers never slows
consumer acks. aio-pika's robust connection retries on a fixed interval; the binding asks for
exponential backoff with jitter (AMQP-025), so this module owns the loop: reconnect, re-declare
everything, re-register every consumer (AMQP-026), and tell the engine its deliveries are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage

from ojs_amqp.amqp import frames
from ojs_amqp.amqp.bounded import (
    BrokerTimeouts,
    abort,
    blocked,
    connect_within,
    stalled,
    within,
)
from ojs_amqp.amqp.codec import Outgoing
from ojs_amqp.amqp.failures import (
    CONNECTION_ERRORS,
    DECLARE_RACE_RETRY_DELAYS_S,
    PUBLISH_ERRORS,
    is_declare_race,
)
from ojs_amqp.amqp.inbound import Inbound
from ojs_amqp.amqp.pipe import FrameBatch, Pipe, Settler, has_frame_queue
from ojs_amqp.amqp.topology import QueueSpec, Topology
from ojs_amqp.errors import (
    BackendUnavailable,
    BrokerStalled,
    OjsError,
    PublishRejected,
    QueueFull,
    Unroutable,
    describe,
)
from ojs_amqp.logs import redact
from ojs_amqp.tls import is_permanent_tls_failure

log = logging.getLogger("ojs_amqp.broker")

DeliveryHandler = Callable[[Inbound], Awaitable[None]]
T = TypeVar("T")

#: A stall is reported (Broker.stall) until a wait of its kind is answered, or for this long
#: after the last wait of its kind that timed out (a declare that stalled once, for a queue
#: nobody pushes to again, must not leave health degraded for ever).
STALL_MEMORY_S = 30.0
#: How a log line names each kind of stalled wait once it is answered again.
_KIND_WORDS = {"confirm": "publish confirms", "declare": "declares", "rpc": "requests"}

#: RabbitMQ 3.10 can answer Declare-Ok for a quorum queue a few milliseconds before the queue
#: has elected its leader (new queues, and every queue after a broker restart), and it nacks
#: publishes in that gap. A publish nacked this soon after the daemon declared a queue is
#: tried again after each of these delays before the nack counts as a refusal.
FRESH_QUEUE_S = 5.0
FRESH_QUEUE_RETRY_DELAYS_S = (0.02, 0.05, 0.1, 0.2, 0.4)
#: Queue deletes run on this many channels at once: the broker deletes queues of different
#: channels in parallel, one channel's in order (1,500 queues: 4.7 s on one, 1.3 s on 16).
DELETE_CHANNELS = 16


class TopologyMismatch(OjsError):
    """A queue exists with other arguments (406 PRECONDITION_FAILED); we never redeclare it."""

    code = "backend_error"
    http_status = 500


class BrokerObserver(Protocol):
    """What the broker reports as it works (the daemon's Metrics implements this)."""

    def published(self, exchange_kind: str, confirm_seconds: float) -> None: ...

    def returned(self) -> None: ...

    def reconnected(self) -> None: ...

    def consumed(self, queue_kind: str) -> None: ...


#: Metric label of each consumed queue's kind (QueueSpec.kind -> queue_kind).
_CONSUMED_KINDS = {
    "job": "job", "dead-letter": "dead_letter", "due": "due", "control": "control",
    "submit": "submit", "retry-intake": "retry", "cron-leader": "cron",
}  # fmt: skip


class _NoObserver:
    def published(self, exchange_kind: str, confirm_seconds: float) -> None:
        pass

    def returned(self) -> None:
        pass

    def reconnected(self) -> None:
        pass

    def consumed(self, queue_kind: str) -> None:
        pass


def backoff_seconds(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """1 s doubling to 60 s, +-25% jitter (binding AMQP-025)."""
    base = min(2.0 ** max(0, attempt - 1), 60.0)
    return base * (0.75 + 0.5 * rng())


def _worth_retrying(exc: BaseException) -> bool:
    """Connection errors are retried at start, except TLS verdicts that no retry can change
    (a certificate the other side refuses): those stop the daemon at once."""
    return isinstance(exc, CONNECTION_ERRORS) and not is_permanent_tls_failure(exc)


def _link(conn: AbstractConnection) -> aiormq.abc.AbstractConnection:
    """The aiormq connection under an aio-pika one (hot channels are opened on it)."""
    if conn.transport is None:
        raise BackendUnavailable("the broker connection is closed")
    return conn.transport.connection


@dataclass(slots=True)
class _Consumer:
    queue_name: str
    arguments: dict[str, Any]
    prefetch: int
    handler: DeliveryHandler
    channel: aiormq.abc.AbstractChannel | None = None
    tag: str | None = None
    #: Channels whose consumer the broker cancelled; kept open so the deliveries they hold
    #: (buffered or leased) can still be acked.
    retired: list[aiormq.abc.AbstractChannel] = field(default_factory=list)
    #: The broker cancelled this consumer: its queue may have been deleted with messages in
    #: it. Cleared once `on_consumer_restored` has run after consuming again.
    cancelled_by_broker: bool = False


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
        self._consumers: dict[str, _Consumer] = {}
        #: Idle channels for queue deletes, and how many deletes may run at once.
        self._spare_channels: list[aiormq.abc.AbstractChannel] = []
        self._delete_slots = asyncio.Semaphore(DELETE_CHANNELS)
        self._deleting = 0
        self._lost = asyncio.Event()
        self._restoring: set[asyncio.Task[None]] = set()
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

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, attempts: int = 5) -> None:
        """Connect (retrying `attempts` times), declare the fixed topology, watch the link.

        Every failed attempt is one log line naming the broker and what it waited for; the
        last one's error is raised (the CLI turns it into exit 2)."""
        frames.install()
        where = redact(self._url)
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._connect()
                break
            except Exception as exc:
                if not _worth_retrying(exc):
                    raise
                if attempt >= attempts:
                    log.error(
                        "broker %s, attempt %d of %d failed: %s; giving up",
                        where, attempt, attempts, describe(exc),
                    )  # fmt: skip
                    raise
                delay = backoff_seconds(attempt)
                log.warning(
                    "broker %s, attempt %d of %d failed: %s; next attempt in %.1fs",
                    where, attempt, attempts, describe(exc), delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
        self._watch_task = asyncio.create_task(self._watch(), name="broker-watch")

    async def close(self) -> None:
        self._closing = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        if self._probe is not None:
            self._probe.cancel()
        for conn in (self._con_conn, self._pub_conn):
            if conn is not None and not conn.is_closed:
                await self._close_connection(conn)
        self.connected = False

    async def _close_connection(self, conn: AbstractConnection) -> None:
        """Close gracefully if the broker answers in time, else drop the socket."""
        try:
            await within(self.timeouts.rpc_s, "Connection.Close", conn.close())
        except BrokerStalled:
            if conn.transport is not None:
                abort(conn.transport.connection)
        except Exception as exc:  # closing a broken link: nothing more to do
            log.debug("closing a broker connection failed: %r", exc)

    async def _connect(self) -> None:
        """Open both connections, declare everything, restore every consumer; all or nothing:
        a failure part-way closes what was opened, so no half-set-up connection lingers."""
        self._lost.clear()
        opened: list[AbstractConnection] = []
        try:
            for role in ("publish", "consume"):
                conn = await connect_within(
                    self.timeouts.connect_s,
                    functools.partial(
                        aio_pika.connect, self._url, ssl_context=self._ssl_context,
                        client_properties={"connection_name": f"{self._name}-{role}"},
                    ),
                )  # fmt: skip
                opened.append(conn)
                conn.close_callbacks.add(self._on_close)
            await self._set_up(*opened)
        except BaseException:
            self.connected = False
            for half_open in opened:
                half_open.close_callbacks.discard(self._on_close)
                await self._close_connection(half_open)
            raise
        for kind in list(self._stalls):  # a new connection: nothing stalls on it yet
            self._unstall(kind)

    async def _set_up(self, pub: AbstractConnection, con: AbstractConnection) -> None:
        self._pub_conn, self._con_conn = pub, con
        await self._open_pipe()
        link = _link(con)
        self._settler = Settler(link, FrameBatch(link) if has_frame_queue(link) else None)
        # No confirms on this one: notifications must not queue behind job publishes.
        self._notify_channel = await self._channel(pub)
        props = getattr(pub.transport.connection, "server_properties", {}) if pub.transport else {}
        version = props.get("version", b"unknown")
        self.server_version = version.decode() if isinstance(version, bytes) else str(version)
        await self._declare_all()
        # Connected from here on: a restored consumer's first deliveries may move jobs at
        # once (publish the next copy), and must not be refused as "not connected".
        self.connected = True
        for consumer in self._consumers.values():
            await self._start_consumer(consumer)

    def _on_close(self, *_: Any) -> None:
        if not self._closing:
            self._lost.set()

    # --- bounded waits and stalls ----------------------------------------------------------

    async def _waiting(self, kind: str, timeout_s: float, what: str, call: Awaitable[T]) -> T:
        """`call`, bounded by `timeout_s`; a timeout is a stall of `kind` (see `_stalled`),
        an answer ends that kind's stall."""
        try:
            result = await within(timeout_s, what, call)
        except BrokerStalled as exc:
            self._stalled(kind, exc)
            raise
        if self._stalls:
            self._answered(kind)
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

    def _stalled(self, kind: str, exc: BrokerStalled) -> None:
        """A wait of `kind` timed out: health says degraded with the reason, and a probe asks
        whether the connection still answers at all. One that does not is dropped and left to
        the reconnect loop, as a heartbeat timeout would be, only sooner: aiormq's heartbeat
        check needs three missed intervals (3 min by default). One that does answer stays up:
        a broker out of file handles still serves the queues it has, and a new connection
        would not get through its handshake."""
        new = kind not in self._stalls
        self._stalls[kind] = exc.message
        self.stall = "; ".join(self._stalls.values())
        if new:
            log.warning("the broker link is degraded: %s", exc.message)
        expiry = self._stall_expiry.pop(kind, None)
        if expiry is not None:
            expiry.cancel()
        self._stall_expiry[kind] = asyncio.get_running_loop().call_later(
            STALL_MEMORY_S, self._stall_expired, kind
        )
        if self._probe is None and self.connected and not self._closing:
            self._probe = asyncio.create_task(self._check_link(), name="broker-probe")

    def _answered(self, kind: str) -> None:
        if self._unstall(kind):
            log.info("the broker answers %s again", _KIND_WORDS.get(kind, kind))

    def _stall_expired(self, kind: str) -> None:
        self._stall_expiry.pop(kind, None)
        if self._unstall(kind):
            log.info(
                "no %s timed out for %.0fs: no longer reported as degraded",
                _KIND_WORDS.get(kind, kind), STALL_MEMORY_S,
            )  # fmt: skip

    def _unstall(self, kind: str) -> bool:
        expiry = self._stall_expiry.pop(kind, None)
        if expiry is not None:
            expiry.cancel()
        if self._stalls.pop(kind, None) is None:
            return False
        self.stall = "; ".join(self._stalls.values()) or None
        if self.stall is None:
            self._said = None
        return True

    async def _check_link(self) -> None:
        """Round trips on both connections within the RPC timeout (a channel, a passive
        declare); a connection that does not answer is treated as lost."""
        alarmed = False
        try:
            for conn in (self._pub_conn, self._con_conn):
                if conn is None or conn.is_closed or self._closing:
                    continue
                if conn.transport is not None and blocked(conn.transport.connection):
                    alarmed = True
                    # A resource alarm: the broker reads nothing from this connection until
                    # it clears, and a new connection would be blocked the same way.
                    self._verdict(
                        f"the broker has blocked the connection {redact(self._url)} (a memory "
                        "or disk alarm: rabbitmq-diagnostics alarms); staying connected until "
                        "it clears"
                    )
                    continue
                try:
                    await within(self.timeouts.rpc_s, "a liveness probe", self._round_trip(conn))
                except (BrokerStalled, *CONNECTION_ERRORS, aiormq.exceptions.AMQPError) as exc:
                    log.error(
                        "the broker connection %s does not answer (%s); treating it as lost",
                        redact(self._url), describe(exc),
                    )  # fmt: skip
                    self._drop()
                    return
            if not alarmed:
                self._answered("rpc")  # the probe is a request, and it was answered
            if self.stall and not alarmed:
                self._verdict(
                    f"the broker still answers on its connections; staying connected while "
                    f"{self.stall}"
                )
        finally:
            self._probe = None

    def _verdict(self, text: str) -> None:
        """Say what a probe found, once per stall episode (a probe follows every stall)."""
        if text != self._said:
            self._said = text
            log.warning("%s", text)

    async def _round_trip(self, conn: AbstractConnection) -> None:
        channel = await conn.channel(publisher_confirms=False)
        try:
            await channel.get_exchange(self.topology.direct_exchange, ensure=True)
        finally:
            await channel.close()

    def _drop(self) -> None:
        """Give up on both connections now; the reconnect loop takes over."""
        self.connected = False
        for conn in (self._pub_conn, self._con_conn):
            if conn is None or conn.transport is None or conn.is_closed:
                continue
            if not abort(conn.transport.connection):
                self._in_background(self._close_connection(conn), "close-stalled")
        self._lost.set()

    async def _watch(self) -> None:
        while True:
            await self._lost.wait()
            if self._closing:
                return
            self.connected = False
            log.warning("lost the broker connection; reconnecting")
            for callback in self.on_connection_lost:
                callback()
            for conn in (self._pub_conn, self._con_conn):
                if conn is not None and not conn.is_closed:
                    await self._close_connection(conn)
            attempt = 0
            while not self._closing:
                attempt += 1
                try:
                    await self._connect()
                    break
                except CONNECTION_ERRORS as exc:
                    delay = backoff_seconds(attempt)
                    log.warning(
                        "broker %s, reconnect attempt %d failed: %s; next in %.1fs",
                        redact(self._url), attempt, describe(exc), delay,
                    )  # fmt: skip
                    await asyncio.sleep(delay)
            self.reconnections += 1
            self._observer.reconnected()
            log.info("reconnected to the broker (reconnection %d)", self.reconnections)
            for hook in self.on_reconnected:
                await hook()

    # --- declarations ----------------------------------------------------------------------

    async def _declare_all(self) -> None:
        """The fixed topology, then every queue declared so far with its binding (after a
        reconnect, or after someone deleted an exchange and its bindings with it)."""
        await self._declare_fixed()
        for queue_name, (arguments, exchange, key) in list(self._declared.items()):
            try:
                await self._declare_queue(queue_name, arguments, exchange, key)
            except TopologyMismatch as exc:  # recreated by someone else while we were away
                log.error("%s", exc.message)

    async def _declare_fixed(self) -> None:
        assert self._pub_conn is not None
        async with self._short_lived(self._pub_conn) as channel:
            for exchange in self.topology.exchanges():
                kind = aio_pika.ExchangeType(exchange.type)
                await self._waiting(
                    "declare", self.timeouts.declare_s, f"the declare of exchange {exchange.name}",
                    channel.declare_exchange(exchange.name, kind, durable=True),
                )  # fmt: skip
        for spec in self.topology.fixed_queues():
            await self._declare(spec)

    async def _open_pipe(self) -> None:
        assert self._pub_conn is not None
        confirming = await self._waiting(
            "rpc", self.timeouts.channel_s, "opening the publishing channel",
            _link(self._pub_conn).channel(
                publisher_confirms=True,
                on_return_raises=True,
                frame_buffer_size=frames.CONFIRM_FRAME_BUFFER,
            ),
        )  # fmt: skip
        self._pipe = Pipe(confirming, confirm_timeout=self.timeouts.confirm_s)
        confirming.closing.add_done_callback(
            lambda closing: self._on_publishing_closed(confirming, closing)
        )

    def _on_publishing_closed(
        self, channel: aiormq.abc.AbstractChannel, closing: asyncio.Future[Any]
    ) -> None:
        """The broker closed the publishing channel, the connection lives on: a publish to an
        exchange someone deleted, typically. Open it again and declare the topology again
        (the exchange and its bindings) rather than refuse every publish until a restart."""
        reason = None if closing.cancelled() else closing.exception()
        if (
            self._closing
            or self._pipe is None
            or self._pipe.channel is not channel
            or not isinstance(reason, aiormq.exceptions.ChannelClosed)
            or channel.connection.is_closed
        ):
            return
        log.warning(
            "the broker closed the publishing channel (%s); opening it again and declaring "
            "the topology again", reason,
        )  # fmt: skip
        self._in_background(self._reopen_pipe(), "reopen-publishing")

    async def _reopen_pipe(self) -> None:
        async def step() -> None:
            if self._pipe is None or self._pipe.channel.is_closed:
                await self._open_pipe()
            await self._declare_all()

        if await self._retrying("publish again", step, lambda: True):
            log.info("publishing again")

    async def _retrying(
        self, what: str, step: Callable[[], Awaitable[None]], wanted: Callable[[], bool]
    ) -> bool:
        """Run `step` until it succeeds, with backoff, while the connection lives and
        `wanted()` holds (once the connection is gone the reconnect loop restores it all)."""
        attempt = 0
        while not self._closing and self.connected and wanted():
            attempt += 1
            try:
                await step()
            except Exception as exc:
                delay = backoff_seconds(attempt)
                log.warning("could not %s (%r); next try in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
                continue
            return True
        return False

    async def _declare(self, spec: QueueSpec) -> None:
        self._kinds[spec.name] = spec.kind
        await self._declare_queue(spec.name, spec.arguments, spec.exchange, spec.routing_key)

    async def _declare_queue(
        self, name: str, arguments: dict[str, Any], exchange: str = "", routing_key: str = ""
    ) -> None:
        """Declare a durable queue and bind it (unless `exchange` is the default exchange);
        remembered, so reconnects redeclare it. A declare that raced another connection's
        (`is_declare_race`) is tried again after a short wait."""
        for delay in (*DECLARE_RACE_RETRY_DELAYS_S, None):
            try:
                await self._declare_queue_once(name, arguments, exchange, routing_key)
                return
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                if delay is None or not is_declare_race(exc):
                    raise
                log.info("the declare of queue %s met another declare of it; again in %.2fs",
                         name, delay)  # fmt: skip
            await asyncio.sleep(delay)

    async def _declare_queue_once(
        self, name: str, arguments: dict[str, Any], exchange: str, routing_key: str
    ) -> None:
        assert self._pub_conn is not None
        # A channel of its own: a 406 closes the channel, and must not take the publisher down.
        async with self._short_lived(self._pub_conn) as channel:

            async def declare_and_bind() -> None:
                queue = await channel.declare_queue(name, durable=True, arguments=arguments)
                if exchange:
                    await queue.bind(exchange, routing_key)

            try:
                await self._waiting(
                    "declare", self.timeouts.declare_s, f"the declare of queue {name}",
                    declare_and_bind(),
                )  # fmt: skip
                self._declared[name] = (arguments, exchange, routing_key)
                self._declared_recently_until = time.monotonic() + FRESH_QUEUE_S
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                mismatch = TopologyMismatch(
                    f"queue {name} already exists with different arguments ({exc}); "
                    "delete it or align the configuration — it is never redeclared automatically"
                )
                log.error("%s", mismatch.message)
                raise mismatch from None

    async def ensure_job_queue(self, queue: str) -> None:
        """Declare what one OJS queue needs (job, dead-letter and control queue; idempotent)."""
        t = self.topology
        if t.job_queue(queue) in self._declared:
            return
        self._require_connection()
        for spec in t.queues_of(queue):
            await self._declare(spec)

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
                    self._answered("confirm")
                break
            except BrokerStalled as exc:  # no confirm in time: the caller answers 503
                self._stalled("confirm", exc)
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

    async def consume(
        self, queue_name: str, arguments: dict[str, Any], prefetch: int, handler: DeliveryHandler
    ) -> None:
        """Consume `queue_name` with manual acks; the consumer is restored after reconnects."""
        if queue_name in self._consumers:
            return
        consumer = _Consumer(queue_name, arguments, prefetch, handler)
        self._consumers[queue_name] = consumer
        if self.connected:
            await self._start_consumer(consumer)

    async def _start_consumer(self, consumer: _Consumer) -> None:
        assert self._con_conn is not None
        # aiormq directly: a frame queue sized for the prefetch (amqp/frames.py), and
        # deliveries as slim Inbound objects (amqp/inbound.py).
        channel = await self._waiting(
            "rpc", self.timeouts.channel_s, f"opening a channel to consume {consumer.queue_name}",
            _link(self._con_conn).channel(
                publisher_confirms=False,
                frame_buffer_size=frames.consumer_frame_buffer(consumer.prefetch),
            ),
        )  # fmt: skip
        rpc_s = self.timeouts.rpc_s
        await self._waiting(
            "rpc", rpc_s, "Basic.Qos", channel.basic_qos(prefetch_count=consumer.prefetch)
        )
        consumer.channel = channel
        consumer.retired = [c for c in consumer.retired if not c.is_closed]
        ok = await self._waiting(
            "rpc", rpc_s, f"Basic.Consume of queue {consumer.queue_name}",
            channel.basic_consume(consumer.queue_name, self._counted(consumer), no_ack=False),
        )  # fmt: skip
        consumer.tag = ok.consumer_tag
        channel.on_consumer_cancel_callbacks.add(
            lambda frame: self._on_consumer_cancelled(consumer, frame.consumer_tag)
        )
        channel.closing.add_done_callback(
            lambda closing: self._on_channel_closed(consumer, channel, closing)
        )
        if consumer.cancelled_by_broker:  # consuming again, here or via the reconnect loop
            self._in_background(self._restored(consumer), "consumer-restored")

    def _counted(
        self, consumer: _Consumer
    ) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        """The consumer's handler, telling the observer of each delivery first (deliveries
        the daemon received, by kind of queue)."""
        kind = _CONSUMED_KINDS.get(self._kinds.get(consumer.queue_name, ""), "other")
        observer, handler, settler = self._observer, consumer.handler, self._settler
        assert settler is not None
        consumers, name = self._consumers, consumer.queue_name

        async def counted(delivered: DeliveredMessage) -> None:
            if consumers.get(name) is not consumer:
                return  # stopped, its channel closing: the broker has the message back
            observer.consumed(kind)
            await handler(Inbound(delivered, settler))

        return counted

    def _on_consumer_cancelled(self, consumer: _Consumer, tag: str | None) -> None:
        """The broker sent Basic.Cancel (the queue was deleted, typically): consume again
        rather than sit silently on a dead consumer."""
        if self._closing or tag != consumer.tag or consumer.channel is None:
            return
        log.warning(
            "the broker cancelled the consumer of queue %s (deleted?); if it was deleted, the "
            "messages in it are gone; declaring it again and consuming again",
            consumer.queue_name,
        )  # fmt: skip
        consumer.retired.append(consumer.channel)
        consumer.channel, consumer.tag = None, None
        consumer.cancelled_by_broker = True
        self._in_background(self._consume_again(consumer), "consume-again")

    def _on_channel_closed(
        self, consumer: _Consumer, channel: aiormq.abc.AbstractChannel, closing: asyncio.Future[Any]
    ) -> None:
        """The broker closed a consumer's channel, the connection lives on: typically a
        delivery held unacked past the broker's `consumer_timeout`. Every delivery of that
        channel is back in its queue; tell the engine, and consume again rather than sit on
        a dead consumer (a closed connection is the reconnect loop's)."""
        reason = None if closing.cancelled() else closing.exception()
        if (
            self._closing
            or self._consumers.get(consumer.queue_name) is not consumer
            or consumer.channel is not channel
            or not isinstance(reason, aiormq.exceptions.ChannelClosed)
            or channel.connection.is_closed
        ):
            return
        log.warning(
            "the broker closed the channel consuming %s (%s); its unacked deliveries are back "
            "in the queue; consuming again", consumer.queue_name, reason,
        )  # fmt: skip
        consumer.channel, consumer.tag = None, None
        for hook in self.on_consumer_lost:
            hook(consumer.queue_name)
        self._in_background(self._consume_again(consumer), "consume-again")

    def _in_background(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._restoring.add(task)
        task.add_done_callback(self._restoring.discard)

    async def _consume_again(self, consumer: _Consumer) -> None:
        """Declare the queue again if it is ours and consume it (retried with backoff)."""
        name = consumer.queue_name

        async def step() -> None:
            declared = self._declared.get(name)
            if declared is not None:
                try:
                    await self._declare_queue(name, *declared)
                except TopologyMismatch as exc:  # re-created by someone else: consume anyway
                    log.error("%s", exc.message)
            await self._start_consumer(consumer)

        def wanted() -> bool:
            return self._consumers.get(name) is consumer

        if await self._retrying(f"consume queue {name} again", step, wanted):
            log.info("consuming queue %s again", name)

    async def _restored(self, consumer: _Consumer) -> None:
        """Tell the engine a cancelled consumer consumes again, so it can republish what the
        broker lost; retried whenever the consumer is started again until it succeeds."""
        try:
            for hook in self.on_consumer_restored:
                await hook(consumer.queue_name)
        except Exception as exc:
            log.warning(
                "recovery after the cancelled consumer of %s failed (%r); retried when it "
                "consumes again", consumer.queue_name, exc,
            )  # fmt: skip
            return
        consumer.cancelled_by_broker = False

    async def stop_consumer(self, queue_name: str) -> None:
        """Stop consuming one queue; its unacked deliveries return to it."""
        consumer = self._consumers.pop(queue_name, None)
        if consumer is not None and consumer.channel is not None:
            await self._close_consumer_channel(consumer.channel)

    async def cancel_consumer(self, queue_name: str, timeout_s: float = 5.0) -> None:
        """Ask the broker to send one consumer nothing more (Basic.Cancel, bounded). What it
        delivered stays unacked on its channel, to be acked before `stop_consumer`: closing
        the channel over it would return it, and every return counts against a quorum
        queue's delivery limit."""
        consumer = self._consumers.get(queue_name)
        if consumer is None or consumer.channel is None or consumer.tag is None:
            return
        channel, tag = consumer.channel, consumer.tag
        if channel.is_closed:
            return
        try:
            await asyncio.wait_for(channel.basic_cancel(tag), timeout_s)
        except (*CONNECTION_ERRORS, aiormq.exceptions.AMQPError) as exc:
            log.warning("could not cancel the consumer of %s (%r)", queue_name, exc)

    def consuming(self, queue_name: str) -> bool:
        return queue_name in self._consumers

    async def _close_consumer_channel(self, channel: aiormq.abc.AbstractChannel) -> None:
        """Acks already made go out ahead of the close; none is written after it."""
        if channel.is_closed:
            return
        if self._settler is not None:  # a writer that stopped writing must not hold us here
            await self._waiting(
                "rpc", self.timeouts.rpc_s, "the acks ahead of a Channel.Close",
                self._settler.stop(channel),
            )  # fmt: skip
        await self._waiting("rpc", self.timeouts.rpc_s, "Channel.Close", channel.close())

    async def stop_consumers(self, exclude: set[str] | frozenset[str] = frozenset()) -> None:
        """Close every consumer channel (but those consuming `exclude`); their unacked
        deliveries return to their queues. The closes go out together: each OJS queue has
        consumers, and one close after the other would grow with their number."""
        consumers = [c for name, c in self._consumers.items() if name not in exclude]
        for consumer in consumers:  # first: these closes are ours, not the broker's
            del self._consumers[consumer.queue_name]
        await self._close_consumers(consumers)

    async def _close_consumers(self, consumers: list[_Consumer]) -> None:
        channels = [c for consumer in consumers for c in (consumer.channel, *consumer.retired)]
        for consumer in consumers:
            consumer.channel, consumer.retired = None, []
        await asyncio.gather(*(self._close_consumer_channel(c) for c in channels if c is not None))

    # --- maintenance (test mode, tools) ----------------------------------------------------

    async def purge(self, queue_names: list[str]) -> None:
        assert self._pub_conn is not None
        channel = await self._channel(self._pub_conn)
        try:
            for name in queue_names:
                try:
                    queue = await channel.get_queue(name, ensure=False)
                    await self._waiting(
                        "rpc", self.timeouts.rpc_s, f"Queue.Purge of {name}", queue.purge()
                    )
                except aiormq.exceptions.ChannelNotFoundEntity:
                    channel = await self._channel(self._pub_conn)
        finally:
            await self._close_channel(channel)

    async def delete_queues(self, queue_names: list[str]) -> None:
        """Stop consuming queues, delete them (messages and all) and forget them, so no
        reconnect declares them again; deletes run DELETE_CHANNELS at once. Deleting a queue
        that does not exist succeeds. Raises BackendUnavailable if the broker is away or a
        delete times out; the queues not deleted stay forgotten (a use declares them again)."""
        consumers = [self._consumers.pop(n) for n in queue_names if n in self._consumers]
        for name in queue_names:
            self._declared.pop(name, None)
            self._kinds.pop(name, None)
        # A close that fails does not matter: the delete cancels the consumer anyway.
        await asyncio.gather(self._close_consumers(consumers), return_exceptions=True)
        self._deleting += 1
        try:
            results = await asyncio.gather(
                *(self._delete_queue(name) for name in queue_names), return_exceptions=True
            )
        finally:
            self._deleting -= 1
            if not self._deleting:  # idle channels are not kept between deletes
                spare, self._spare_channels = self._spare_channels, []
                await self._drop_deleting_channels(spare)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise BackendUnavailable(
                f"{len(failed)} of {len(queue_names)} queue deletes failed: {failed[0]!r}"
            )

    async def _delete_queue(self, name: str) -> None:
        """One Queue.Delete on an idle deleting channel (or a new one); every wait bounded."""
        async with self._delete_slots:
            self._require_connection()
            assert self._pub_conn is not None
            channel = None
            while self._spare_channels and channel is None:
                spare = self._spare_channels.pop()
                channel = None if spare.is_closed else spare
            if channel is None:
                channel = await self._waiting(
                    "rpc", self.timeouts.channel_s, "Channel.Open",
                    _link(self._pub_conn).channel(publisher_confirms=False),
                )  # fmt: skip
            try:
                await self._waiting(
                    "rpc", self.timeouts.rpc_s, f"Queue.Delete {name}", channel.queue_delete(name)
                )
            except BaseException:
                await self._drop_deleting_channels([channel])  # its answer may still come
                raise
            self._spare_channels.append(channel)

    async def _drop_deleting_channels(self, channels: list[aiormq.abc.AbstractChannel]) -> None:
        open_ones = [c for c in channels if not c.is_closed]
        closes = [within(self.timeouts.rpc_s, "Channel.Close", c.close()) for c in open_ones]
        await asyncio.gather(*closes, return_exceptions=True)

    def open_connections(self) -> int:
        return sum(1 for c in (self._pub_conn, self._con_conn) if c is not None and not c.is_closed)

    def open_channels(self) -> int:
        """Open AMQP channels on both connections (consumers, publishers, and any short-lived
        declare or ping channel at that moment)."""
        total = 0
        for conn in (self._pub_conn, self._con_conn):
            if conn is None or conn.is_closed or conn.transport is None:
                continue
            channels = getattr(conn.transport.connection, "channels", {})
            total += sum(1 for ch in channels.values() if ch is not None and not ch.is_closed)
        return total

    def declared_queues(self) -> list[str]:
        return list(self._declared)

    async def delete_everything(self) -> None:
        """Delete every queue and exchange of this topology (tests clean up with this)."""
        assert self._pub_conn is not None
        await self.stop_consumers()
        t = self.topology
        names = list(self._declared)
        channel = await self._channel(self._pub_conn)
        rpc_s = self.timeouts.rpc_s
        for name in names:
            await self._waiting("rpc", rpc_s, f"Queue.Delete of {name}", channel.queue_delete(name))
        for exchange in t.exchanges():
            await self._waiting(
                "rpc", rpc_s, f"Exchange.Delete of {exchange.name}",
                channel.exchange_delete(exchange.name),
            )  # fmt: skip
        await self._close_channel(channel)
        self._declared.clear()

    async def ready_count(self, queue_name: str) -> int:
        """Messages ready in a queue (a passive declare); 0 if it cannot be read."""
        self._require_connection()
        assert self._pub_conn is not None
        async with self._short_lived(self._pub_conn) as channel:
            try:
                queue = await self._waiting(
                    "rpc", self.timeouts.rpc_s, f"a passive declare of {queue_name}",
                    channel.declare_queue(queue_name, passive=True),
                )  # fmt: skip
            except aiormq.exceptions.AMQPError:
                return 0
            return int(queue.declaration_result.message_count or 0)

    async def ping(self, timeout_s: float | None = None) -> float:
        """Round-trip time to the broker in milliseconds (a channel and a passive declare),
        within `timeout_s` (default: the RPC timeout); past it BrokerStalled, and the stall
        is recorded like any other (health reports it, a probe checks the link)."""
        self._require_connection()
        assert self._pub_conn is not None
        start = time.perf_counter()
        bound = self.timeouts.rpc_s if timeout_s is None else timeout_s
        await self._waiting("rpc", bound, "a ping", self._round_trip(self._pub_conn))
        return (time.perf_counter() - start) * 1000
