"""The daemon's consumers: started with a frame queue sized for their prefetch, counted,
consumed again after the broker cancels one or closes its channel, and stopped so that no
ack follows a channel's close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiormq
from aiormq.abc import DeliveredMessage

from ojs_amqp.amqp import frames
from ojs_amqp.amqp.failures import CONNECTION_ERRORS
from ojs_amqp.amqp.inbound import Inbound
from ojs_amqp.amqp.links import aiormq_link
from ojs_amqp.errors import TopologyMismatch

if TYPE_CHECKING:
    from ojs_amqp.amqp.broker import Broker


log = logging.getLogger("ojs_amqp.broker")


#: Metric label of each consumed queue's kind (QueueSpec.kind -> queue_kind).
_CONSUMED_KINDS = {
    "job": "job", "dead-letter": "dead_letter", "due": "due", "control": "control",
    "submit": "submit", "retry-intake": "retry", "cron-leader": "cron",
}  # fmt: skip
DeliveryHandler = Callable[[Inbound], Awaitable[None]]


@dataclass(slots=True)
class ConsumerState:
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


class Consumers:
    """Starts, restores and stops the broker's consumers."""

    def __init__(self, broker: Broker) -> None:
        self._b = broker

    async def consume(
        self, queue_name: str, arguments: dict[str, Any], prefetch: int, handler: DeliveryHandler
    ) -> None:
        """Consume `queue_name` with manual acks; the consumer is restored after reconnects."""
        if queue_name in self._b._consumers:
            return
        consumer = ConsumerState(queue_name, arguments, prefetch, handler)
        self._b._consumers[queue_name] = consumer
        if self._b.connected:
            await self.start_consumer(consumer)

    async def start_consumer(self, consumer: ConsumerState) -> None:
        assert self._b._con_conn is not None
        # aiormq directly: a frame queue sized for the prefetch (amqp/frames.py), and
        # deliveries as slim Inbound objects (amqp/inbound.py).
        channel = await self._b._waiting(
            "rpc", self._b.timeouts.channel_s,
            f"opening a channel to consume {consumer.queue_name}",
            aiormq_link(self._b._con_conn).channel(
                publisher_confirms=False,
                frame_buffer_size=frames.consumer_frame_buffer(consumer.prefetch),
            ),
        )  # fmt: skip
        rpc_s = self._b.timeouts.rpc_s
        await self._b._waiting(
            "rpc", rpc_s, "Basic.Qos", channel.basic_qos(prefetch_count=consumer.prefetch)
        )
        consumer.channel = channel
        consumer.retired = [c for c in consumer.retired if not c.is_closed]
        ok = await self._b._waiting(
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
            self._b._in_background(self._restored(consumer), "consumer-restored")

    def _counted(
        self, consumer: ConsumerState
    ) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        """The consumer's handler, telling the observer of each delivery first (deliveries
        the daemon received, by kind of queue)."""
        kind = _CONSUMED_KINDS.get(self._b._kinds.get(consumer.queue_name, ""), "other")
        observer, handler, settler = self._b._observer, consumer.handler, self._b._settler
        assert settler is not None
        consumers, name = self._b._consumers, consumer.queue_name

        async def counted(delivered: DeliveredMessage) -> None:
            if consumers.get(name) is not consumer:
                return  # stopped, its channel closing: the broker has the message back
            observer.consumed(kind)
            await handler(Inbound(delivered, settler))

        return counted

    def _on_consumer_cancelled(self, consumer: ConsumerState, tag: str | None) -> None:
        """The broker sent Basic.Cancel (the queue was deleted, typically): consume again
        rather than sit silently on a dead consumer."""
        if self._b._closing or tag != consumer.tag or consumer.channel is None:
            return
        log.warning(
            "the broker cancelled the consumer of queue %s (deleted?); if it was deleted, the "
            "messages in it are gone; declaring it again and consuming again",
            consumer.queue_name,
        )  # fmt: skip
        consumer.retired.append(consumer.channel)
        consumer.channel, consumer.tag = None, None
        consumer.cancelled_by_broker = True
        self._b._in_background(self._consume_again(consumer), "consume-again")

    def _on_channel_closed(
        self,
        consumer: ConsumerState,
        channel: aiormq.abc.AbstractChannel,
        closing: asyncio.Future[Any],
    ) -> None:
        """The broker closed a consumer's channel, the connection lives on: typically a
        delivery held unacked past the broker's `consumer_timeout`. Every delivery of that
        channel is back in its queue; tell the engine, and consume again rather than sit on
        a dead consumer (a closed connection is the reconnect loop's)."""
        reason = None if closing.cancelled() else closing.exception()
        if (
            self._b._closing
            or self._b._consumers.get(consumer.queue_name) is not consumer
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
        self._b._supervisor.call_hooks(
            "after a consumer channel closed", self._b.on_consumer_lost, consumer.queue_name
        )
        self._b._in_background(self._consume_again(consumer), "consume-again")

    async def _consume_again(self, consumer: ConsumerState) -> None:
        """Declare the queue again if it is ours and consume it (retried with backoff)."""
        name = consumer.queue_name

        async def step() -> None:
            declared = self._b._declared.get(name)
            if declared is not None:
                try:
                    await self._b._declarations.declare_queue(name, *declared)
                except TopologyMismatch as exc:  # re-created by someone else: consume anyway
                    log.error("%s", exc.message)
            await self.start_consumer(consumer)

        def wanted() -> bool:
            return self._b._consumers.get(name) is consumer

        if await self._b._retrying(f"consume queue {name} again", step, wanted):
            log.info("consuming queue %s again", name)

    async def _restored(self, consumer: ConsumerState) -> None:
        """Tell the engine a cancelled consumer consumes again, so it can republish what the
        broker lost; retried whenever the consumer is started again until it succeeds."""
        name = consumer.queue_name
        hooks = self._b.on_consumer_restored
        if await self._b._supervisor.run_hooks("recovery after a cancelled consumer", hooks, name):
            consumer.cancelled_by_broker = False
        else:
            log.warning("recovery after the cancelled consumer of %s is retried when it "
                        "consumes again", name)  # fmt: skip

    async def stop_consumer(self, queue_name: str) -> None:
        """Stop consuming one queue; its unacked deliveries return to it."""
        consumer = self._b._consumers.pop(queue_name, None)
        if consumer is not None and consumer.channel is not None:
            await self.close_consumer_channel(consumer.channel)

    async def cancel_consumer(self, queue_name: str, timeout_s: float = 5.0) -> None:
        """Ask the broker to send one consumer nothing more (Basic.Cancel, bounded). What it
        delivered stays unacked on its channel, to be acked before `stop_consumer`: closing
        the channel over it would return it, and every return counts against a quorum
        queue's delivery limit."""
        consumer = self._b._consumers.get(queue_name)
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
        return queue_name in self._b._consumers

    async def close_consumer_channel(self, channel: aiormq.abc.AbstractChannel) -> None:
        """Acks already made go out ahead of the close; none is written after it."""
        if channel.is_closed:
            return
        if self._b._settler is not None:  # a writer that stopped writing must not hold us here
            await self._b._waiting(
                "rpc", self._b.timeouts.rpc_s, "the acks ahead of a Channel.Close",
                self._b._settler.stop(channel),
            )  # fmt: skip
        await self._b._waiting("rpc", self._b.timeouts.rpc_s, "Channel.Close", channel.close())

    async def stop_consumers(self, exclude: set[str] | frozenset[str] = frozenset()) -> None:
        """Close every consumer channel (but those consuming `exclude`); their unacked
        deliveries return to their queues. The closes go out together: each OJS queue has
        consumers, and one close after the other would grow with their number."""
        consumers = [c for name, c in self._b._consumers.items() if name not in exclude]
        for consumer in consumers:  # first: these closes are ours, not the broker's
            del self._b._consumers[consumer.queue_name]
        await self.close_consumers(consumers)

    async def close_consumers(self, consumers: list[ConsumerState]) -> None:
        channels = [c for consumer in consumers for c in (consumer.channel, *consumer.retired)]
        for consumer in consumers:
            consumer.channel, consumer.retired = None, []
        await asyncio.gather(*(self.close_consumer_channel(c) for c in channels if c is not None))
