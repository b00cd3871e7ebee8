"""An in-memory `JobTransport`: queues, the ladder, dead letters and an outage, all held
in lists a test can read and drive.

Deliveries are made by `FakeBroker.deliver*` calls, never on their own, so a test decides exactly
when each copy reaches the engine (the races of a real broker, made deterministic). What
the engine publishes is recorded in `published` in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from ojs_amqp.core.job import Job, to_wire
from ojs_amqp.engine.ports import Delivery, DeliveryHandler, TransportListener
from ojs_amqp.errors import BackendUnavailable, OjsError


class FakeHandle:
    """A delivery's settlement, as the broker would see it."""

    __slots__ = ("_message", "outcome", "void")

    def __init__(self, message: Message) -> None:
        self._message = message
        #: None until settled; then "acked", "rejected" (dead-lettered) or "requeued".
        self.outcome: str | None = None
        self.void = False

    @property
    def settled(self) -> bool:
        return self.outcome is not None

    def ack(self) -> None:
        if self.outcome is None and not self.void:
            self.outcome = "acked"

    def reject(self, *, requeue: bool) -> None:
        if self.outcome is None and not self.void:
            self.outcome = "requeued" if requeue else "rejected"


@dataclass
class Message:
    """A copy in a queue: what its headers would say, and its body."""

    job_id: str | None
    copy: int | None
    body: bytes
    queue: str
    state: str | None = None
    due_at_ms: int | None = None
    returns: int = 0
    death_reason: str | None = None
    handles: list[FakeHandle] = field(default_factory=list)

    @classmethod
    def of(cls, job: Job, due_at_ms: int | None = None) -> Message:
        return cls(job.id, job.copy, orjson.dumps(to_wire(job)), job.queue, job.state.value,
                   due_at_ms)  # fmt: skip

    @property
    def last(self) -> FakeHandle | None:
        return self.handles[-1] if self.handles else None


@dataclass(frozen=True)
class Published:
    kind: str  # available, discarded, parked, reparked, cancel
    job_id: str | None
    copy: int | None
    queue: str
    due_at_ms: int | None = None


class MemoryTransport:
    def __init__(self, prefetch: int = 1000) -> None:
        self._prefetch = prefetch
        self._listeners: list[TransportListener] = []
        self.connected = True
        #: Set to an error to make every publish raise it (the broker away, a full queue).
        self.refuse: OjsError | None = None
        self.published: list[Published] = []
        self.declared: set[str] = set()
        #: Ready messages per job queue, the ladder (timers not yet due), dead letters.
        self.ready: dict[str, list[Message]] = {}
        self.ladder: list[Message] = []
        self.dead: dict[str, list[Message]] = {}
        self.delivered: list[tuple[str, Message, FakeHandle]] = []
        self._job_consumers: dict[str, DeliveryHandler] = {}
        self._dead_consumers: dict[str, DeliveryHandler] = {}
        self._due: DeliveryHandler | None = None
        self._leader: DeliveryHandler | None = None
        self.events: list[tuple[str, str, int]] = []
        self.leader_tokens: list[str] = []

    # --- JobTransport ----------------------------------------------------------------------

    @property
    def prefetch_hint(self) -> int:
        return self._prefetch

    def listen(self, listener: TransportListener) -> None:
        self._listeners.append(listener)

    def _check(self) -> None:
        if not self.connected:
            raise BackendUnavailable("the broker is not connected")
        if self.refuse is not None:
            raise self.refuse

    async def publish_available(self, job: Job) -> None:
        self._check()
        self.published.append(Published("available", job.id, job.copy, job.queue))
        self.ready.setdefault(job.queue, []).append(Message.of(job))

    async def publish_discarded(self, job: Job) -> None:
        self._check()
        self.published.append(Published("discarded", job.id, job.copy, job.queue))
        self.dead.setdefault(job.queue, []).append(Message.of(job))

    async def park(self, job: Job, due_at_ms: int, delay_ms: int) -> None:
        self._check()
        self.published.append(Published("parked", job.id, job.copy, job.queue, due_at_ms))
        self.ladder.append(Message.of(job, due_at_ms))

    async def repark(self, delivery: Delivery, delay_ms: int) -> None:
        self._check()
        handle = delivery.handle
        assert isinstance(handle, FakeHandle)
        message = handle._message
        self.published.append(Published("reparked", message.job_id, message.copy, message.queue,
                                         message.due_at_ms))  # fmt: skip
        self.ladder.append(Message(message.job_id, message.copy, message.body, message.queue,
                                   message.state, message.due_at_ms))  # fmt: skip

    @staticmethod
    def rides_ladder(delay_ms: int) -> bool:
        return delay_ms > 2000  # as the real ladder: held by the daemon under two units

    async def broadcast_cancel(self, job: Job) -> None:
        self._check()
        self.published.append(Published("cancel", job.id, job.copy, job.queue))

    async def declare_queue(self, queue: str) -> None:
        self._check()
        self.declared.add(queue)

    async def consume_due(self, handler: DeliveryHandler) -> None:
        self._due = handler

    async def consume_dead_letters(self, queue: str, handler: DeliveryHandler) -> None:
        self._dead_consumers[queue] = handler

    async def consume_jobs(self, queue: str, handler: DeliveryHandler) -> None:
        self._job_consumers[queue] = handler

    def consuming_jobs(self, queue: str) -> bool:
        return queue in self._job_consumers

    async def ready_count(self, queue: str) -> int:
        return len(self.ready.get(queue, []))

    async def cancel_job_consumer(self, queue: str) -> None:
        self._job_consumers.pop(queue, None)

    async def stop_job_consumer(self, queue: str) -> None:
        self._job_consumers.pop(queue, None)
        self.return_unsettled(queue)

    async def stop_queue_consumers(self, queue: str) -> None:
        await self.stop_job_consumer(queue)
        self._dead_consumers.pop(queue, None)

    def broker_queues(self, queue: str) -> list[str]:
        return [f"job:{queue}", f"control:{queue}", f"dead:{queue}"]

    async def delete_broker_queues(self, names: list[str]) -> None:
        for name in names:
            kind, _, queue = name.partition(":")
            if kind == "job":
                self.ready.pop(queue, None)
                self.declared.discard(queue)
            elif kind == "dead":
                self.dead.pop(queue, None)

    async def stop_consumers_except(self, names: set[str]) -> None:
        self._due = None
        self._leader = None

    async def purge_fixed(self) -> None:
        self.ladder.clear()

    def stray_queues(self, known: set[str]) -> list[str]:
        return []

    async def consume_leader_tokens(self, handler: DeliveryHandler) -> None:
        self._leader = handler

    async def send_leader_token(self, daemon_id: str) -> None:
        self._check()
        self.leader_tokens.append(daemon_id)

    async def publish_event(self, event_type: str, queue: str, seq: int, body: bytes) -> None:
        self._check()
        self.events.append((event_type, queue, seq))

    def return_unsettled(self, queue: str | None) -> None:
        """Unsettled deliveries (of one job queue, or all) go back to their queue, counted."""
        for where, message, handle in self.delivered:
            if handle.settled or handle.void or (queue is not None and where != queue):
                continue
            handle.void = True
            message.returns += 1
            if where == "due":
                self.ladder.append(message)
            elif not where.startswith("dead:"):
                self.ready.setdefault(where, []).insert(0, message)

    def kinds(self) -> list[str]:
        return [p.kind for p in self.published]


class FakeBroker:
    """What a test does to the broker under a MemoryTransport: deliver what is queued (when
    and in which order it chooses), return deliveries, drop the connection, lose channels."""

    def __init__(self, transport: MemoryTransport) -> None:
        self._t = transport

    def inject(self, queue: str, body: bytes, job_id: str | None = None,
               copy: int | None = None) -> Message:  # fmt: skip
        """A message another client published straight to a job queue (binding PUSH)."""
        message = Message(job_id, copy, body, queue)
        self._t.ready.setdefault(queue, []).append(message)
        return message

    async def _hand(self, handler: DeliveryHandler, message: Message, where: str) -> FakeHandle:
        handle = FakeHandle(message)
        message.handles.append(handle)
        self._t.delivered.append((where, message, handle))
        delivery = Delivery(handle, message.job_id, message.copy, message.due_at_ms,
                            message.returns, message.body, message.queue, message.state,
                            message.death_reason)  # fmt: skip
        await handler(delivery)
        return handle

    async def deliver(self, queue: str, count: int | None = None) -> list[FakeHandle]:
        """Deliver ready messages of a job queue to its consumer, oldest first."""
        handler = self._t._job_consumers.get(queue)
        assert handler is not None, f"nothing consumes {queue}"
        ready = self._t.ready.get(queue, [])
        taken = ready[: len(ready) if count is None else count]
        del ready[: len(taken)]
        return [await self._hand(handler, message, queue) for message in taken]

    async def deliver_message(self, message: Message) -> FakeHandle:
        """Deliver one message (again, or out of order) to its job queue's consumer."""
        handler = self._t._job_consumers.get(message.queue)
        assert handler is not None, f"nothing consumes {message.queue}"
        with_queue = self._t.ready.get(message.queue, [])
        if message in with_queue:
            with_queue.remove(message)
        return await self._hand(handler, message, message.queue)

    async def deliver_due(self, message: Message | None = None) -> list[FakeHandle]:
        """Let the ladder hand its timers (or one) to the due queue's consumer."""
        assert self._t._due is not None, "nothing consumes the due queue"
        taken = [message] if message is not None else list(self._t.ladder)
        for item in taken:
            if item in self._t.ladder:
                self._t.ladder.remove(item)
        return [await self._hand(self._t._due, item, "due") for item in taken]

    async def deliver_dead(self, queue: str) -> list[FakeHandle]:
        handler = self._t._dead_consumers.get(queue)
        assert handler is not None, f"nothing consumes the dead letters of {queue}"
        taken = self._t.dead.pop(queue, [])
        return [await self._hand(handler, message, f"dead:{queue}") for message in taken]

    def dead_letter(self, message: Message, reason: str = "rejected") -> Message:
        """The broker dead-letters a message (a worker's reject, its delivery limit)."""
        dead = Message(message.job_id, message.copy, message.body, message.queue, None,
                       None, message.returns, reason)  # fmt: skip
        self._t.dead.setdefault(message.queue, []).append(dead)
        return dead

    async def lose_connection(self) -> None:
        """The connection drops: every unsettled delivery is void and back in its queue."""
        self._t.connected = False
        self._t.return_unsettled(None)
        for listener in self._t._listeners:
            listener.connection_lost()

    async def reconnect(self) -> None:
        self._t.connected = True
        for listener in self._t._listeners:
            await listener.reconnected()

    def lose_job_consumer(self, queue: str) -> None:
        """The broker closes one job queue consumer's channel."""
        self._t.return_unsettled(queue)
        for listener in self._t._listeners:
            listener.job_consumer_lost(queue)

    def lose_due_consumer(self) -> None:
        self._t.return_unsettled("due")
        for listener in self._t._listeners:
            listener.due_consumer_lost()

    async def restore_job_queue(self, queue: str) -> None:
        """The job queue was deleted under us and exists again, empty."""
        self._t.ready[queue] = []
        for listener in self._t._listeners:
            await listener.job_queue_restored(queue)
