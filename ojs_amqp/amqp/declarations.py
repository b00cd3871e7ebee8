"""Declaring the topology: the fixed exchanges and queues, and every queue declared since,
again after each reconnect. A queue that exists with other arguments is never redeclared
(TopologyMismatch)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq

from ojs_amqp.amqp.failures import through_declare_races
from ojs_amqp.amqp.topology import QueueSpec
from ojs_amqp.errors import TopologyMismatch

if TYPE_CHECKING:
    from ojs_amqp.amqp.broker import Broker

log = logging.getLogger("ojs_amqp.broker")

#: RabbitMQ 3.10 can answer Declare-Ok for a quorum queue a few milliseconds before the queue
#: has elected its leader (new queues, and every queue after a broker restart), and it nacks
#: publishes in that gap. A publish nacked this soon after the daemon declared a queue is
#: tried again after each of these delays before the nack counts as a refusal.
FRESH_QUEUE_S = 5.0


class Declarations:
    """Declares the topology and remembers it for the next reconnect."""

    def __init__(self, broker: Broker) -> None:
        self._b = broker

    async def declare_all(self) -> None:
        """The fixed topology, then every queue declared so far with its binding (after a
        reconnect, or after someone deleted an exchange and its bindings with it)."""
        await self.declare_fixed()
        for queue_name, (arguments, exchange, key) in list(self._b._declared.items()):
            try:
                await self.declare_queue(queue_name, arguments, exchange, key)
            except TopologyMismatch as exc:  # recreated by someone else while we were away
                log.error("%s", exc.message)

    async def declare_fixed(self) -> None:
        assert self._b._pub_conn is not None
        async with self._b._short_lived(self._b._pub_conn) as channel:
            for exchange in self._b.topology.exchanges():
                kind = aio_pika.ExchangeType(exchange.type)
                await self._b._waiting(
                    "declare", self._b.timeouts.declare_s,
                    f"the declare of exchange {exchange.name}",
                    channel.declare_exchange(exchange.name, kind, durable=True),
                )  # fmt: skip
        for spec in self._b.topology.fixed_queues():
            await self.declare(spec)

    async def declare(self, spec: QueueSpec) -> None:
        self._b._kinds[spec.name] = spec.kind
        await self.declare_queue(spec.name, spec.arguments, spec.exchange, spec.routing_key)

    async def declare_queue(
        self, name: str, arguments: dict[str, Any], exchange: str = "", routing_key: str = ""
    ) -> None:
        """Declare a durable queue and bind it (unless `exchange` is the default exchange);
        remembered, so reconnects redeclare it. A declare that raced another connection's
        (`is_declare_race`) is tried again after a short wait."""

        async def note(delay: float) -> None:
            log.info("the declare of queue %s met another declare of it; again in %.2fs",
                     name, delay)  # fmt: skip

        await through_declare_races(
            lambda: self._declare_queue_once(name, arguments, exchange, routing_key), note
        )

    async def _declare_queue_once(
        self, name: str, arguments: dict[str, Any], exchange: str, routing_key: str
    ) -> None:
        assert self._b._pub_conn is not None
        # A channel of its own: a 406 closes the channel, and must not take the publisher down.
        async with self._b._short_lived(self._b._pub_conn) as channel:

            async def declare_and_bind() -> None:
                queue = await channel.declare_queue(name, durable=True, arguments=arguments)
                if exchange:
                    await queue.bind(exchange, routing_key)

            try:
                await self._b._waiting(
                    "declare", self._b.timeouts.declare_s, f"the declare of queue {name}",
                    declare_and_bind(),
                )  # fmt: skip
                self._b._declared[name] = (arguments, exchange, routing_key)
                self._b._declared_recently_until = time.monotonic() + FRESH_QUEUE_S
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                mismatch = TopologyMismatch(
                    f"queue {name} already exists with different arguments ({exc}); "
                    "delete it or align the configuration — it is never redeclared automatically"
                )
                log.error("%s", mismatch.message)
                raise mismatch from None

    async def ensure_job_queue(self, queue: str) -> None:
        """Declare what one OJS queue needs (job, dead-letter and control queue; idempotent)."""
        t = self._b.topology
        if t.job_queue(queue) in self._b._declared:
            return
        self._b._require_connection()
        for spec in t.queues_of(queue):
            await self.declare(spec)
