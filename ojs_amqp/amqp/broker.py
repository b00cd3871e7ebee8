"""Connections, channels, confirmed publishing and consumers, with our own reconnect loop.

Two connections (publishing and consuming) so broker flow control on publishers never slows
consumer acks. aio-pika's robust connection retries on a fixed interval; the binding asks for
exponential backoff with jitter (AMQP-025), so this module owns the loop: reconnect, re-declare
everything, re-register every consumer (AMQP-026), and tell the engine its deliveries are gone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
)
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from ojs_amqp.amqp.codec import Outgoing
from ojs_amqp.amqp.topology import (
    DUE_ROUTING_KEY,
    LADDER_LEVELS,
    LEADER_ROUTING_KEY,
    Topology,
    ladder_routing_key,
)
from ojs_amqp.errors import BackendUnavailable, OjsError

log = logging.getLogger("ojs_amqp.broker")

DeliveryHandler = Callable[[AbstractIncomingMessage], Awaitable[None]]
CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


class TopologyMismatch(OjsError):
    """A queue exists with other arguments (406 PRECONDITION_FAILED); we never redeclare it."""

    code = "backend_error"
    http_status = 500


class BrokerObserver(Protocol):
    """What the broker reports as it works (the daemon's Metrics implements this)."""

    def published(self, exchange_kind: str, confirm_seconds: float) -> None: ...

    def returned(self) -> None: ...

    def reconnected(self) -> None: ...


class _NoObserver:
    def published(self, exchange_kind: str, confirm_seconds: float) -> None:
        pass

    def returned(self) -> None:
        pass

    def reconnected(self) -> None:
        pass


def backoff_seconds(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """1 s doubling to 60 s, +-25% jitter (binding AMQP-025)."""
    base = min(2.0 ** max(0, attempt - 1), 60.0)
    return base * (0.75 + 0.5 * rng())


def _wait(state: RetryCallState) -> float:
    return backoff_seconds(state.attempt_number)


@dataclass(slots=True)
class _Consumer:
    queue_name: str
    arguments: dict[str, Any]
    prefetch: int
    handler: DeliveryHandler
    channel: AbstractChannel | None = None
    tag: str | None = None


class Broker:
    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        publish_timeout_s: float = 10.0,
        connection_name: str = "ojs-amqp",
        observer: BrokerObserver | None = None,
    ) -> None:
        self._url = url
        self.topology = topology
        self._publish_timeout = publish_timeout_s
        self._name = connection_name
        self._observer: BrokerObserver = observer or _NoObserver()
        self._exchange_kinds = {
            topology.direct_exchange: "direct",
            topology.dlx_exchange: "dlx",
            topology.delay_exchange: "delay",
        }
        self._pub_conn: AbstractConnection | None = None
        self._con_conn: AbstractConnection | None = None
        self._pub_channel: AbstractChannel | None = None
        self._notify_channel: AbstractChannel | None = None
        self._declared: dict[str, tuple[dict[str, Any], str, str]] = {}
        self._consumers: dict[str, _Consumer] = {}
        self._lost = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False
        self.reconnections = 0
        self.on_connection_lost: list[Callable[[], None]] = []
        self.on_reconnected: list[Callable[[], Awaitable[None]]] = []
        self.server_version = "unknown"

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, attempts: int = 5) -> None:
        """Connect (retrying `attempts` times), declare the fixed topology, watch the link."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=_wait,
            retry=retry_if_exception_type(CONNECTION_ERRORS),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._connect()
        self._watch_task = asyncio.create_task(self._watch(), name="broker-watch")

    async def close(self) -> None:
        self._closing = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        for conn in (self._con_conn, self._pub_conn):
            if conn is not None and not conn.is_closed:
                await conn.close()
        self.connected = False

    async def _connect(self) -> None:
        self._lost.clear()
        pub = await aio_pika.connect(
            self._url, client_properties={"connection_name": self._name + "-publish"}
        )
        con = await aio_pika.connect(
            self._url, client_properties={"connection_name": self._name + "-consume"}
        )
        for conn in (pub, con):
            conn.close_callbacks.add(self._on_close)
        self._pub_conn, self._con_conn = pub, con
        self._pub_channel = await pub.channel(publisher_confirms=True, on_return_raises=True)
        # No confirms on this one: notifications must not queue behind job publishes.
        self._notify_channel = await pub.channel(publisher_confirms=False)
        props = getattr(pub.transport.connection, "server_properties", {}) if pub.transport else {}
        version = props.get("version", b"unknown")
        self.server_version = version.decode() if isinstance(version, bytes) else str(version)
        await self._declare_fixed()
        for queue_name, (arguments, exchange, key) in list(self._declared.items()):
            await self._declare_queue(queue_name, arguments, exchange, key)
        for consumer in self._consumers.values():
            await self._start_consumer(consumer)
        self.connected = True

    def _on_close(self, *_: Any) -> None:
        if not self._closing:
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
                    await asyncio.gather(conn.close(), return_exceptions=True)
            attempt = 0
            while not self._closing:
                attempt += 1
                try:
                    await self._connect()
                    break
                except CONNECTION_ERRORS as exc:
                    delay = backoff_seconds(attempt)
                    log.warning(
                        "reconnect attempt %d failed (%s); next in %.1fs", attempt, exc, delay
                    )
                    await asyncio.sleep(delay)
            self.reconnections += 1
            self._observer.reconnected()
            log.info("reconnected to the broker (reconnection %d)", self.reconnections)
            for hook in self.on_reconnected:
                await hook()

    # --- declarations ----------------------------------------------------------------------

    async def _declare_fixed(self) -> None:
        assert self._pub_channel is not None
        t = self.topology
        ch = self._pub_channel
        for name in (t.direct_exchange, t.dlx_exchange, t.delay_exchange):
            await ch.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
        await ch.declare_exchange(t.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await self._declare_queue(
            t.due_queue, t.due_queue_arguments(), t.delay_exchange, DUE_ROUTING_KEY
        )
        await self._declare_queue(
            t.leader_queue, t.leader_queue_arguments(), t.delay_exchange, LEADER_ROUTING_KEY
        )
        for level in range(LADDER_LEVELS):
            await self._declare_queue(
                t.ladder_queue(level), t.ladder_queue_arguments(level),
                t.delay_exchange, ladder_routing_key(level),
            )  # fmt: skip

    async def _declare_queue(
        self, name: str, arguments: dict[str, Any], exchange: str, routing_key: str
    ) -> None:
        """Declare a durable queue and bind it; remembered, so reconnects redeclare it."""
        assert self._pub_conn is not None
        # A channel of its own: a 406 closes the channel, and must not take the publisher down.
        channel = await self._pub_conn.channel(publisher_confirms=False)
        try:
            queue = await channel.declare_queue(name, durable=True, arguments=arguments)
            await queue.bind(exchange, routing_key)
            self._declared[name] = (arguments, exchange, routing_key)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise TopologyMismatch(
                f"queue {name} already exists with different arguments ({exc}); "
                "delete it or align the configuration — it is never redeclared automatically"
            ) from None
        finally:
            if not channel.is_closed:
                await channel.close()

    async def ensure_job_queue(self, queue: str) -> None:
        """Declare ojs.queue.{q} and ojs.queue.dlx.{q} with their bindings (idempotent)."""
        t = self.topology
        name = t.job_queue(queue)
        if name in self._declared:
            return
        self._require_connection()
        await self._declare_queue(
            t.dead_letter_queue(queue), t.dead_letter_queue_arguments(), t.dlx_exchange, queue
        )
        await self._declare_queue(name, t.job_queue_arguments(queue), t.direct_exchange, queue)

    # --- publishing ------------------------------------------------------------------------

    def _require_connection(self) -> None:
        if not self.connected or self._pub_channel is None or self._pub_channel.is_closed:
            raise BackendUnavailable("the broker is not connected")

    async def publish(self, exchange: str, routing_key: str, message: Outgoing) -> None:
        """Publish with mandatory=True and wait for the broker's confirm.

        Raises BackendUnavailable when the broker refuses (nack), cannot route (return), or is
        unreachable; the caller must then not ack the current copy. Goes straight to aiormq:
        aio-pika's Message and Exchange layers cost more than the publish itself.
        """
        self._require_connection()
        assert self._pub_channel is not None
        started = time.perf_counter()
        try:
            channel = await self._pub_channel.get_underlay_channel()
            confirmation = await channel.basic_publish(
                message.body,
                exchange=exchange,
                routing_key=routing_key,
                properties=message.properties,
                mandatory=True,
                timeout=self._publish_timeout,
            )
        except aiormq.exceptions.DeliveryError as exc:
            self._observer.returned()
            raise BackendUnavailable(f"the broker rejected the message ({exc})") from None
        except aiormq.exceptions.PublishError as exc:
            self._observer.returned()
            raise BackendUnavailable(f"the message could not be routed ({exc})") from None
        except (
            *CONNECTION_ERRORS,
            aiormq.exceptions.ChannelInvalidStateError,
            RuntimeError,
        ) as exc:
            raise BackendUnavailable(f"publishing failed: {exc!r}") from None
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            self._observer.returned()
            raise BackendUnavailable(f"the broker did not confirm the message ({confirmation!r})")
        kind = self._exchange_kinds.get(exchange, "other")
        self._observer.published(kind, time.perf_counter() - started)

    async def publish_nowait(self, exchange: str, routing_key: str, message: Outgoing) -> None:
        """Fire-and-forget publish (no confirm wait, not mandatory): for notifications such as
        events, where a lost message costs nothing and waiting would cost throughput."""
        self._require_connection()
        if self._notify_channel is None or self._notify_channel.is_closed:
            raise BackendUnavailable("the broker is not connected")
        channel = await self._notify_channel.get_underlay_channel()
        await channel.basic_publish(
            message.body, exchange=exchange, routing_key=routing_key,
            properties=message.properties, mandatory=False,
        )  # fmt: skip

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
        channel = await self._con_conn.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=consumer.prefetch)
        queue = await channel.get_queue(consumer.queue_name, ensure=False)
        consumer.channel = channel
        consumer.tag = await queue.consume(consumer.handler, no_ack=False)

    async def stop_consumers(self) -> None:
        """Close every consumer channel; their unacked deliveries return to their queues."""
        for consumer in self._consumers.values():
            if consumer.channel is not None and not consumer.channel.is_closed:
                await consumer.channel.close()
            consumer.channel = None
        self._consumers.clear()

    # --- maintenance (test mode, tools) ----------------------------------------------------

    async def purge(self, queue_names: list[str]) -> None:
        assert self._pub_conn is not None
        channel = await self._pub_conn.channel(publisher_confirms=False)
        try:
            for name in queue_names:
                try:
                    queue = await channel.get_queue(name, ensure=False)
                    await queue.purge()
                except aiormq.exceptions.ChannelNotFoundEntity:
                    channel = await self._pub_conn.channel(publisher_confirms=False)
        finally:
            if not channel.is_closed:
                await channel.close()

    def open_connections(self) -> int:
        return sum(1 for c in (self._pub_conn, self._con_conn) if c is not None and not c.is_closed)

    def declared_queues(self) -> list[str]:
        return list(self._declared)

    async def delete_everything(self) -> None:
        """Delete every queue and exchange of this topology (tests clean up with this)."""
        assert self._pub_conn is not None
        await self.stop_consumers()
        t = self.topology
        names = list(self._declared)
        channel = await self._pub_conn.channel(publisher_confirms=False)
        for name in names:
            await channel.queue_delete(name)
        for exchange in (t.direct_exchange, t.dlx_exchange, t.delay_exchange, t.events_exchange):
            await channel.exchange_delete(exchange)
        await channel.close()
        self._declared.clear()

    async def ping(self) -> float:
        """Round-trip time to the broker in milliseconds (a passive declare)."""
        self._require_connection()
        assert self._pub_conn is not None
        start = time.perf_counter()
        channel = await self._pub_conn.channel(publisher_confirms=False)
        await channel.get_exchange(self.topology.direct_exchange, ensure=True)
        await channel.close()
        return (time.perf_counter() - start) * 1000
