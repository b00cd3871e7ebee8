"""A broker that stops answering: which kinds of wait stalled, for how long that is reported
(health says degraded), and the liveness probe a stall starts.

A stall is reported (Broker.stall) until a wait of its kind is answered, or for
STALL_MEMORY_S after the last wait of its kind that timed out (a declare that stalled once,
for a queue nobody pushes to again, must not leave health degraded for ever)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiormq
from aio_pika.abc import AbstractConnection

from ojs_amqp.amqp.bounded import blocked, within
from ojs_amqp.amqp.failures import CONNECTION_ERRORS
from ojs_amqp.errors import BrokerStalled, describe
from ojs_amqp.logs import redact

if TYPE_CHECKING:
    from ojs_amqp.amqp.broker import Broker

log = logging.getLogger("ojs_amqp.broker")

#: See the module docstring.
STALL_MEMORY_S = 30.0
#: How a log line names each kind of stalled wait once it is answered again.
_KIND_WORDS = {"confirm": "publish confirms", "declare": "declares", "rpc": "requests"}


class StallWatch:
    """Stall bookkeeping and the probe, over the broker's state."""

    def __init__(self, broker: Broker) -> None:
        self._b = broker

    def stalled(self, kind: str, exc: BrokerStalled) -> None:
        """A wait of `kind` timed out: health says degraded with the reason, and a probe asks
        whether the connection still answers at all. One that does not is dropped and left to
        the reconnect loop, as a heartbeat timeout would be, only sooner: aiormq's heartbeat
        check needs three missed intervals (3 min by default). One that does answer stays up:
        a broker out of file handles still serves the queues it has, and a new connection
        would not get through its handshake."""
        new = kind not in self._b._stalls
        self._b._stalls[kind] = exc.message
        self._b.stall = "; ".join(self._b._stalls.values())
        if new:
            log.warning("the broker link is degraded: %s", exc.message)
        expiry = self._b._stall_expiry.pop(kind, None)
        if expiry is not None:
            expiry.cancel()
        self._b._stall_expiry[kind] = asyncio.get_running_loop().call_later(
            STALL_MEMORY_S, self._stall_expired, kind
        )
        if self._b._probe is None and self._b.connected and not self._b._closing:
            self._b._probe = asyncio.create_task(self._check_link(), name="broker-probe")

    def answered(self, kind: str) -> None:
        if self.unstall(kind):
            log.info("the broker answers %s again", _KIND_WORDS.get(kind, kind))

    def _stall_expired(self, kind: str) -> None:
        self._b._stall_expiry.pop(kind, None)
        if self.unstall(kind):
            log.info(
                "no %s timed out for %.0fs: no longer reported as degraded",
                _KIND_WORDS.get(kind, kind), STALL_MEMORY_S,
            )  # fmt: skip

    def unstall(self, kind: str) -> bool:
        expiry = self._b._stall_expiry.pop(kind, None)
        if expiry is not None:
            expiry.cancel()
        if self._b._stalls.pop(kind, None) is None:
            return False
        self._b.stall = "; ".join(self._b._stalls.values()) or None
        if self._b.stall is None:
            self._b._said = None
        return True

    async def _check_link(self) -> None:
        """Round trips on both connections within the RPC timeout (a channel, a passive
        declare); a connection that does not answer is treated as lost."""
        alarmed = False
        try:
            for conn in (self._b._pub_conn, self._b._con_conn):
                if conn is None or conn.is_closed or self._b._closing:
                    continue
                if conn.transport is not None and blocked(conn.transport.connection):
                    alarmed = True
                    # A resource alarm: the broker reads nothing from this connection until
                    # it clears, and a new connection would be blocked the same way.
                    self.verdict(
                        f"the broker has blocked the connection {redact(self._b._url)} (a memory "
                        "or disk alarm: rabbitmq-diagnostics alarms); staying connected until "
                        "it clears"
                    )
                    continue
                try:
                    await within(self._b.timeouts.rpc_s, "a liveness probe", self.round_trip(conn))
                except (BrokerStalled, *CONNECTION_ERRORS, aiormq.exceptions.AMQPError) as exc:
                    log.error(
                        "the broker connection %s does not answer (%s); treating it as lost",
                        redact(self._b._url), describe(exc),
                    )  # fmt: skip
                    self._b._links.drop()
                    return
            if not alarmed:
                self.answered("rpc")  # the probe is a request, and it was answered
            if self._b.stall and not alarmed:
                self.verdict(
                    f"the broker still answers on its connections; staying connected while "
                    f"{self._b.stall}"
                )
        finally:
            self._b._probe = None

    def verdict(self, text: str) -> None:
        """Say what a probe found, once per stall episode (a probe follows every stall)."""
        if text != self._b._said:
            self._b._said = text
            log.warning("%s", text)

    async def round_trip(self, conn: AbstractConnection) -> None:
        channel = await conn.channel(publisher_confirms=False)
        try:
            await channel.get_exchange(self._b.topology.direct_exchange, ensure=True)
        finally:
            await channel.close()
