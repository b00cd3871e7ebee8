"""The broker's two connections: opening them (all or nothing), noticing their loss, the
reconnect loop's steps (amqp/reconnect.py runs the loop), and the publishing channel, which
is opened again when the broker closes it while the connection lives on."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection

from ojs_amqp.amqp import frames
from ojs_amqp.amqp.bounded import abort, connect_within, within
from ojs_amqp.amqp.pipe import FrameBatch, Pipe, Settler, has_frame_queue
from ojs_amqp.errors import BackendUnavailable, BrokerStalled, describe
from ojs_amqp.logs import redact

if TYPE_CHECKING:
    from ojs_amqp.amqp.broker import Broker

log = logging.getLogger("ojs_amqp.broker")


def aiormq_link(conn: AbstractConnection | None) -> aiormq.abc.AbstractConnection:
    """The aiormq connection under an aio-pika one (hot channels are opened on it)."""
    if conn is None or conn.transport is None:
        raise BackendUnavailable("the broker connection is closed")
    return conn.transport.connection


class Links:
    """Opening, losing and reopening the broker's connections and publishing channel."""

    def __init__(self, broker: Broker) -> None:
        self._b = broker

    async def close_connection(self, conn: AbstractConnection) -> None:
        """Close gracefully if the broker answers in time, else drop the socket."""
        try:
            await within(self._b.timeouts.rpc_s, "Connection.Close", conn.close())
        except BrokerStalled:
            if conn.transport is not None:
                abort(conn.transport.connection)
        except Exception as exc:  # closing a broken link: nothing more to do
            log.debug("closing a broker connection failed: %r", exc)

    async def connect(self) -> None:
        """Open both connections, declare everything, restore every consumer; all or nothing:
        a failure part-way closes what was opened, so no half-set-up connection lingers."""
        self._b._lost.clear()
        opened: list[AbstractConnection] = []
        try:
            for role in ("publish", "consume"):
                conn = await connect_within(
                    self._b.timeouts.connect_s,
                    functools.partial(
                        aio_pika.connect, self._b._url, ssl_context=self._b._ssl_context,
                        client_properties={"connection_name": f"{self._b._name}-{role}"},
                    ),
                )  # fmt: skip
                opened.append(conn)
                conn.close_callbacks.add(self._on_close)
            await self._set_up(*opened)
        except BaseException:
            self._b.connected = False
            for half_open in opened:
                half_open.close_callbacks.discard(self._on_close)
                await self.close_connection(half_open)
            raise
        for kind in list(self._b._stalls):  # a new connection: nothing stalls on it yet
            self._b._stall_watch.unstall(kind)

    async def _set_up(self, pub: AbstractConnection, con: AbstractConnection) -> None:
        self._b._pub_conn, self._b._con_conn = pub, con
        await self.open_pipe()
        link = aiormq_link(con)
        self._b._settler = Settler(link, FrameBatch(link) if has_frame_queue(link) else None)
        # No confirms on this one: notifications must not queue behind job publishes.
        self._b._notify_channel = await self._b._channel(pub)
        props = getattr(pub.transport.connection, "server_properties", {}) if pub.transport else {}
        version = props.get("version", b"unknown")
        self._b.server_version = version.decode() if isinstance(version, bytes) else str(version)
        await self._b._declarations.declare_all()
        # Connected from here on: a restored consumer's first deliveries may move jobs at
        # once (publish the next copy), and must not be refused as "not connected".
        self._b.connected = True
        for consumer in self._b._consumers.values():
            await self._b._consumer_set.start_consumer(consumer)

    def _on_close(self, *_: Any) -> None:
        if not self._b._closing:
            self._b._lost.set()

    def drop(self) -> None:
        """Give up on both connections now; the reconnect loop takes over."""
        self._b.connected = False
        for conn in (self._b._pub_conn, self._b._con_conn):
            if conn is None or conn.transport is None or conn.is_closed:
                continue
            if not abort(conn.transport.connection):
                self._b._in_background(self.close_connection(conn), "close-stalled")
        self._b._lost.set()

    async def until_lost(self, _: None) -> bool:
        """Wait until the link is lost (True) or the broker closes (False); tell the engine
        its deliveries are gone and drop what is left of both connections."""
        await self._b._lost.wait()
        if self._b._closing:
            return False
        self._b.connected = False
        log.warning("lost the broker connection; reconnecting")
        self._b._supervisor.call_hooks("a connection-lost hook", self._b.on_connection_lost)
        for conn in (self._b._pub_conn, self._b._con_conn):
            if conn is not None and not conn.is_closed:
                await self.close_connection(conn)
        return True

    def reconnect_failed(self, attempt: int, exc: BaseException, delay: float) -> None:
        log.warning(
            "broker %s, reconnect attempt %d failed: %s; next in %.1fs",
            redact(self._b._url), attempt, describe(exc), delay,
        )  # fmt: skip

    async def reconnected(self, _: None) -> None:
        """Counted, then the hooks (the engine replays its outbox); a hook that fails is
        logged and counted, and the next loss is still noticed and reconnected."""
        self._b.reconnections += 1
        self._b._observer.reconnected()
        log.info("reconnected to the broker (reconnection %d)", self._b.reconnections)
        await self._b._supervisor.run_hooks("after a reconnect", self._b.on_reconnected)

    def hook_failed(self, exc: BaseException) -> None:
        self._b._supervisor.failed("after a reconnect", exc)

    async def open_pipe(self) -> None:
        assert self._b._pub_conn is not None
        confirming = await self._b._waiting(
            "rpc", self._b.timeouts.channel_s, "opening the publishing channel",
            aiormq_link(self._b._pub_conn).channel(
                publisher_confirms=True,
                on_return_raises=True,
                frame_buffer_size=frames.CONFIRM_FRAME_BUFFER,
            ),
        )  # fmt: skip
        self._b._pipe = Pipe(confirming, confirm_timeout=self._b.timeouts.confirm_s)
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
            self._b._closing
            or self._b._pipe is None
            or self._b._pipe.channel is not channel
            or not isinstance(reason, aiormq.exceptions.ChannelClosed)
            or channel.connection.is_closed
        ):
            return
        log.warning(
            "the broker closed the publishing channel (%s); opening it again and declaring "
            "the topology again", reason,
        )  # fmt: skip
        self._b._in_background(self._reopen_pipe(), "reopen-publishing")

    async def _reopen_pipe(self) -> None:
        async def step() -> None:
            if self._b._pipe is None or self._b._pipe.channel.is_closed:
                await self.open_pipe()
            await self._b._declarations.declare_all()

        if await self._b._retrying("publish again", step, lambda: True):
            log.info("publishing again")
