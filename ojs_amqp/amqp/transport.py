"""The engine's JobTransport over RabbitMQ: `Broker`, the topology and the codec behind it.

Everything the engine must not know lives here: queue and exchange names, x-arguments,
prefetch counts, which ladder level a timer rides, message properties and headers, and
which broker queue a consumer event is about. Deliveries reach the engine as
`engine.ports.Delivery` (read once, here); Broker's `on_*` hook lists are adapted to the
typed `TransportListener`, with one error policy: a listener that raises is logged and
counted, and the broker's own loop goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

import orjson
from pamqp.commands import Basic

from ojs_amqp.amqp import codec, protocol
from ojs_amqp.amqp.broker import Broker
from ojs_amqp.amqp.inbound import Inbound
from ojs_amqp.amqp.topology import DUE_ROUTING_KEY, LEADER_ROUTING_KEY, ladder_level_for
from ojs_amqp.amqp.topology import ladder_routing_key as _ladder_key
from ojs_amqp.core.job import Job
from ojs_amqp.engine.ports import Delivery, DeliveryHandler, TransportListener
from ojs_amqp.errors import BackendUnavailable
from ojs_amqp.supervisor import Supervisor

log = logging.getLogger("ojs_amqp.transport")

#: Unacked timer messages the due queue's consumer holds (each is a job's timer held to the
#: millisecond), and dead letters per queue.
DUE_PREFETCH = 2000
DEAD_LETTER_PREFETCH = 100
LEADER_PREFETCH = 10
EVENT_CONTENT_TYPE = "application/cloudevents+json"


def delivery_of(message: Inbound) -> Delivery:
    """What the engine reads of a delivery: its headers once, no body parse."""
    headers = message.properties.headers or {}
    job_id = headers.get(codec.H_JOB_ID)
    if isinstance(job_id, bytes):
        job_id = job_id.decode("utf-8", "replace")
    if not isinstance(job_id, str):
        job_id = message.properties.message_id
    copy = headers.get(codec.H_COPY)
    due = headers.get(codec.H_DUE_AT)
    returns = headers.get(codec.H_DELIVERY_COUNT)
    return Delivery(
        message,
        job_id,
        copy if type(copy) is int else None,
        due if type(due) is int else None,
        returns if type(returns) is int and returns > 0 else 0,
        message.body,
        message.routing_key,
    )


def dead_letter_of(message: Inbound) -> Delivery:
    delivery = delivery_of(message)
    state = message.headers.get(codec.H_STATE)
    delivery.state = state.decode() if isinstance(state, bytes) else state
    delivery.death_reason = codec.death_reason(message.headers)
    return delivery


class AmqpTransport:
    """`engine.ports.JobTransport` over one `Broker` (which it does not own: the runtime
    starts and closes it)."""

    def __init__(
        self,
        broker: Broker,
        prefetch: int,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.broker = broker
        self.topology = broker.topology
        self._prefetch = prefetch
        #: broker queue name -> OJS queue, for the job queues declared so far.
        self._job_queues: dict[str, str] = {}
        self.listeners = _Listeners(broker, self._job_queues, on_failure)

    @property
    def connected(self) -> bool:
        return self.broker.connected

    @property
    def prefetch_hint(self) -> int:
        return self._prefetch

    def listen(self, listener: TransportListener) -> None:
        self.listeners.add(listener)

    # --- copies ----------------------------------------------------------------------------

    async def publish_available(self, job: Job) -> None:
        await self.broker.publish(self.topology.direct_exchange, job.queue, codec.encode(job))

    async def publish_discarded(self, job: Job) -> None:
        await self.broker.publish(self.topology.dlx_exchange, job.queue, codec.encode(job))

    async def park(self, job: Job, due_at_ms: int, delay_ms: int) -> None:
        message = codec.encode(job, due_at_ms=due_at_ms)
        await self.broker.publish(self.topology.delay_exchange, _ladder_routing(delay_ms), message)

    async def repark(self, delivery: Delivery, delay_ms: int) -> None:
        message = cast(Inbound, delivery.handle)
        again = codec.Outgoing(message.body, codec.properties_of(message))
        await self.broker.publish(self.topology.delay_exchange, _ladder_routing(delay_ms), again)

    @staticmethod
    def rides_ladder(delay_ms: int) -> bool:
        return ladder_level_for(delay_ms) is not None

    async def broadcast_cancel(self, job: Job) -> None:
        body = orjson.dumps({"job_id": job.id, "queue": job.queue})
        props = Basic.Properties(
            content_type="application/json", message_type=protocol.CANCEL, delivery_mode=1
        )
        key = protocol.WORKER_CANCEL_PREFIX + job.queue
        await self.broker.publish_nowait(
            self.topology.workers_exchange, key, codec.Outgoing(body, props)
        )

    # --- queues and consumers --------------------------------------------------------------

    async def declare_queue(self, queue: str) -> None:
        await self.broker.ensure_job_queue(queue)
        self._job_queues[self.topology.job_queue(queue)] = queue

    async def consume_due(self, handler: DeliveryHandler) -> None:
        async def on_due(message: Inbound) -> None:
            await handler(delivery_of(message))

        t = self.topology
        await self.broker.consume(t.due_queue, t.due_queue_arguments(), DUE_PREFETCH, on_due)

    async def consume_dead_letters(self, queue: str, handler: DeliveryHandler) -> None:
        async def on_dead(message: Inbound) -> None:
            await handler(dead_letter_of(message))

        t = self.topology
        await self.broker.consume(
            t.dead_letter_queue(queue), t.dead_letter_queue_arguments(), DEAD_LETTER_PREFETCH,
            on_dead,
        )  # fmt: skip

    async def consume_jobs(self, queue: str, handler: DeliveryHandler) -> None:
        async def on_job(message: Inbound) -> None:
            await handler(delivery_of(message))

        t = self.topology
        name = t.job_queue(queue)
        self._job_queues[name] = queue
        await self.broker.consume(name, t.job_queue_arguments(queue), self._prefetch, on_job)

    def consuming_jobs(self, queue: str) -> bool:
        return self.broker.consuming(self.topology.job_queue(queue))

    async def ready_count(self, queue: str) -> int:
        return await self.broker.ready_count(self.topology.job_queue(queue))

    async def cancel_job_consumer(self, queue: str) -> None:
        await self.broker.cancel_consumer(self.topology.job_queue(queue))

    async def stop_job_consumer(self, queue: str) -> None:
        await self.broker.stop_consumer(self.topology.job_queue(queue))

    async def stop_queue_consumers(self, queue: str) -> None:
        t = self.topology
        for name in (t.job_queue(queue), t.control_queue(queue), t.dead_letter_queue(queue)):
            await self.broker.stop_consumer(name)

    def broker_queues(self, queue: str) -> list[str]:
        return [spec.name for spec in reversed(self.topology.queues_of(queue))]

    async def delete_broker_queues(self, names: list[str]) -> None:
        await self.broker.delete_queues(names)
        for name in names:
            self._job_queues.pop(name, None)

    async def stop_consumers_except(self, names: set[str]) -> None:
        await self.broker.stop_consumers(exclude=names)

    async def purge_fixed(self) -> None:
        await self.broker.purge(self.topology.all_fixed_queues())

    def stray_queues(self, known: set[str]) -> list[str]:
        fixed = set(self.topology.all_fixed_queues())
        return [n for n in self.broker.declared_queues() if n not in fixed and n not in known]

    # --- cron leadership and events --------------------------------------------------------

    async def consume_leader_tokens(self, handler: DeliveryHandler) -> None:
        async def on_token(message: Inbound) -> None:
            await handler(Delivery(message, None, None))

        t = self.topology
        await self.broker.consume(
            t.leader_queue, t.leader_queue_arguments(), LEADER_PREFETCH, on_token
        )

    async def send_leader_token(self, daemon_id: str) -> None:
        props = Basic.Properties(message_id=daemon_id, delivery_mode=1)
        await self.broker.publish(
            self.topology.delay_exchange, LEADER_ROUTING_KEY, codec.Outgoing(b"", props)
        )

    async def publish_event(self, event_type: str, queue: str, seq: int, body: bytes) -> None:
        props = Basic.Properties(
            content_type=EVENT_CONTENT_TYPE, delivery_mode=2, message_type=event_type,
            message_id=str(seq), app_id="ojs",
        )  # fmt: skip
        try:
            await self.broker.publish_nowait(
                self.topology.events_exchange, f"{event_type}.{queue}", codec.Outgoing(body, props)
            )
        except (ConnectionError, RuntimeError) as exc:  # aiormq's, wrapped at this edge
            raise BackendUnavailable(f"publishing an event failed: {exc!r}") from None


class _Listeners:
    """Broker's `on_*` hook lists, adapted to typed `TransportListener`s: broker queue names
    become OJS queues, and a listener that raises is handled by the daemon's one policy
    (`Supervisor`: logged, counted in ojs_background_failures_total under the broker's own
    task names), never raised into the broker's reconnect loop; the next listener still
    hears."""

    def __init__(
        self,
        broker: Broker,
        job_queues: dict[str, str],
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._due_queue = broker.topology.due_queue
        self._job_queues = job_queues
        self._listeners: list[TransportListener] = []
        self._supervisor = Supervisor(log, on_failure)
        broker.on_connection_lost.append(self._connection_lost)
        broker.on_reconnected.append(self._reconnected)
        broker.on_consumer_restored.append(self._consumer_restored)
        broker.on_consumer_lost.append(self._consumer_lost)

    @property
    def failures(self) -> int:
        """Listener calls that raised so far."""
        return self._supervisor.failures

    def add(self, listener: TransportListener) -> None:
        self._listeners.append(listener)

    def _connection_lost(self) -> None:
        hooks = [listener.connection_lost for listener in self._listeners]
        self._supervisor.call_hooks("a connection-lost hook", hooks)

    async def _reconnected(self) -> None:
        hooks = [listener.reconnected for listener in self._listeners]
        await self._supervisor.run_hooks("after a reconnect", hooks)

    def _consumer_lost(self, queue_name: str) -> None:
        queue = self._job_queues.get(queue_name)
        if queue_name == self._due_queue:
            hooks = [listener.due_consumer_lost for listener in self._listeners]
            self._supervisor.call_hooks("after a consumer channel closed", hooks)
        elif queue is not None:
            lost = [listener.job_consumer_lost for listener in self._listeners]
            self._supervisor.call_hooks("after a consumer channel closed", lost, queue)

    async def _consumer_restored(self, queue_name: str) -> None:
        queue = self._job_queues.get(queue_name)
        if queue is None:
            return
        hooks = [listener.job_queue_restored for listener in self._listeners]
        await self._supervisor.run_hooks("recovery after a cancelled consumer", hooks, queue)


def _ladder_routing(delay_ms: int) -> str:
    level = ladder_level_for(delay_ms)
    return DUE_ROUTING_KEY if level is None else _ladder_key(level)
