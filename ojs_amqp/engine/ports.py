"""What the engine needs from the world, as typed ports (docs/architecture.md, ADR 0003).

The engine imports `core`, `errors`, its own modules and these ports only. `amqp/transport.py`
implements `JobTransport` over RabbitMQ (queue names, x-arguments, prefetch, the delay
ladder's routing and message properties stay there), `store/` implements the store roles, and
`ojs_amqp/testing/` has in-memory fakes of each, so the engine's rules run in unit tests on a
fake clock. Errors raised through a port are `ojs_amqp.errors` classes only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ojs_amqp.core.job import Job, JobState

# --- deliveries ------------------------------------------------------------------------------


class DeliveryHandle(Protocol):
    """How a delivery is settled, each at most once (the broker's message; a fake's record)."""

    @property
    def settled(self) -> bool: ...

    @property
    def void(self) -> bool:
        """Its channel is gone: the broker has taken the delivery back."""
        ...

    def ack(self) -> None: ...

    def reject(self, *, requeue: bool) -> None: ...


@dataclass(slots=True)
class Delivery:
    """One message handed to the engine, read once at the edge: which copy of which job it
    is, and how often the broker returned it. The engine never sees an AMQP message."""

    handle: DeliveryHandle
    job_id: str | None
    copy: int | None
    #: When a timer message is due (wall clock, ms); None for job copies.
    due_at_ms: int | None = None
    #: How often the broker says this message went back to its queue (0: never).
    returns: int = 0
    body: bytes = b""
    #: The OJS queue it was routed to (dead letters: the queue the job was in).
    queue: str = ""
    #: Dead letters: the state the copy was published with, and why the broker dead-lettered
    #: it (`delivery_limit`, `rejected`, ...), if it says.
    state: str | None = None
    death_reason: str | None = None

    @property
    def void(self) -> bool:
        return self.handle.void

    @property
    def settled(self) -> bool:
        return self.handle.settled


DeliveryHandler = Callable[[Delivery], Awaitable[None]]

#: Why the broker dead-lettered a message past its queue's delivery limit.
DELIVERY_LIMIT = "delivery_limit"


# --- the job transport -----------------------------------------------------------------------


class TransportListener(Protocol):
    """What the engine hears about the broker link. A listener that raises is logged and
    counted by the transport; the link's own loop goes on (ADR 0003)."""

    def connection_lost(self) -> None:
        """Every delivery held is void (its connection is gone)."""

    async def reconnected(self) -> None:
        """The link is back, consumers restored."""

    def job_consumer_lost(self, queue: str) -> None:
        """The broker closed the channel of one job queue's consumer: its deliveries are void."""

    def due_consumer_lost(self) -> None:
        """The broker closed the due queue consumer's channel: the timers held are void."""

    async def job_queue_restored(self, queue: str) -> None:
        """A job queue the broker lost (deleted under us) exists again, empty."""


class JobTransport(Protocol):
    """Moves copies of jobs through the broker. Publishes wait for the broker's confirm and
    raise BackendUnavailable (not routed, broker away) or QueueFull (refused)."""

    @property
    def connected(self) -> bool: ...

    def listen(self, listener: TransportListener) -> None: ...

    # copies
    async def publish_available(self, job: Job) -> None:
        """The job's copy into its job queue."""

    async def publish_discarded(self, job: Job) -> None:
        """The job's copy into its dead-letter queue."""

    async def park(self, job: Job, due_at_ms: int, delay_ms: int) -> None:
        """The job's copy onto the delay ladder, due at `due_at_ms` (in `delay_ms`)."""

    async def repark(self, delivery: Delivery, delay_ms: int) -> None:
        """A timer delivery, unchanged, back onto the ladder for the `delay_ms` left."""

    def rides_ladder(self, delay_ms: int) -> bool:
        """Whether a timer due in `delay_ms` should go down the ladder rather than be held."""

    async def broadcast_cancel(self, job: Job) -> None:
        """Tell native workers of the job's queue it is cancelled (no confirm)."""

    # queues and consumers
    async def declare_queue(self, queue: str) -> None: ...

    async def consume_due(self, handler: DeliveryHandler) -> None: ...

    async def consume_dead_letters(self, queue: str, handler: DeliveryHandler) -> None: ...

    async def consume_jobs(self, queue: str, handler: DeliveryHandler) -> None: ...

    def consuming_jobs(self, queue: str) -> bool: ...

    async def ready_count(self, queue: str) -> int: ...

    async def cancel_job_consumer(self, queue: str) -> None:
        """Stop new deliveries; what was delivered stays held until the channel closes."""

    async def stop_job_consumer(self, queue: str) -> None: ...

    async def stop_queue_consumers(self, queue: str) -> None:
        """Stop every consumer of an OJS queue's broker queues."""

    def broker_queues(self, queue: str) -> list[str]:
        """The names of an OJS queue's broker queues, in the order to delete them."""

    async def delete_broker_queues(self, names: list[str]) -> None: ...

    async def stop_consumers_except(self, names: set[str]) -> None: ...

    async def purge_fixed(self) -> None:
        """Empty the fixed topology (test-mode reset)."""

    def stray_queues(self, known: set[str]) -> list[str]:
        """Queues declared that are neither fixed nor in `known` (a failed first use)."""

    @property
    def prefetch_hint(self) -> int:
        """Deliveries a job queue's consumer holds at most."""

    # cron leadership and events
    async def consume_leader_tokens(self, handler: DeliveryHandler) -> None: ...

    async def send_leader_token(self, daemon_id: str) -> None: ...

    async def publish_event(self, event_type: str, queue: str, seq: int, body: bytes) -> None:
        """A notification (no confirm): dropped by the caller when it fails."""


# --- the store, by role (each a subset of store.base.JobStore, same names) -------------------


class JobRecords(Protocol):
    """Read and write job rows (every move)."""

    async def insert(self, job: Job, *, published: bool) -> None: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def update(
        self,
        job: Job,
        *,
        expect_copy: int | None = None,
        expect_state: JobState | None = None,
        published: bool = True,
    ) -> bool: ...

    async def delete(self, job_id: str) -> bool: ...


class Outbox(Protocol):
    async def mark_published(self, job_ids: list[str]) -> None: ...

    async def unpublished(self, limit: int) -> list[Job]: ...

    async def outbox_size(self) -> int: ...


class QueueInfo(Protocol):
    """A queue the store knows (store.base.QueueInfo is one)."""

    @property
    def name(self) -> str: ...

    @property
    def created_at_ms(self) -> int: ...


class QueueRecords(Protocol):
    async def add_queue(self, name: str, now_ms: int) -> None: ...

    async def queues(self) -> Sequence[QueueInfo]: ...

    async def open_jobs(self, queue: str) -> int: ...

    async def unfinished(self, queue: str) -> list[Job]: ...

    async def available(self, queue: str) -> list[Job]: ...

    async def delete_queue(self, queue: str) -> int: ...


class Housekeeping(Protocol):
    async def expiring(self, now_ms: int, limit: int) -> list[Job]: ...

    async def prune_finished(self, completed_before_ms: int, discarded_before_ms: int) -> int: ...

    async def prune_dead_letters(self, before_ms: int, keep_per_queue: int) -> int: ...

    async def dead_letters(
        self, queue: str | None, limit: int, offset: int
    ) -> tuple[list[Job], int]: ...

    async def count_by_state(self) -> dict[tuple[str, str], int]: ...

    async def reset(self) -> None: ...


class CronRecords(Protocol):
    async def put_cron(
        self, cron: dict[str, Any], *, expect_next_run_ms: int | None = None
    ) -> bool: ...

    async def get_cron(self, name: str) -> dict[str, Any] | None: ...

    async def crons(self) -> list[dict[str, Any]]: ...

    async def due_crons(self, now_ms: int) -> list[dict[str, Any]]: ...

    async def delete_cron(self, name: str) -> bool: ...

    async def get(self, job_id: str) -> Job | None: ...


class EngineStore(JobRecords, Outbox, QueueRecords, Housekeeping, Protocol):
    """Every role the engine's parts use; `store.base.JobStore` satisfies it."""

    #: Which store it is ("sqlite", "postgresql", "memory"): health names it.
    kind: str


# --- time ------------------------------------------------------------------------------------


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """The clocks and timers the engine runs on; `testing.clock.FakeScheduler` drives them."""

    def now_ms(self) -> int:
        """Wall clock, ms since the epoch (job timestamps)."""

    def monotonic(self) -> float:
        """Seconds, for deadlines held in memory."""

    def call_later(
        self, delay_s: float, callback: Callable[..., object], *args: Any
    ) -> TimerHandle: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopScheduler:
    """The real scheduler: the event loop's timers, `time.monotonic`, a wall clock given."""

    __slots__ = ("now_ms",)

    def __init__(self, clock: Callable[[], int]) -> None:
        self.now_ms = clock

    #: The C function itself, not a wrapper: read several times per FETCH.
    monotonic = staticmethod(time.monotonic)

    @staticmethod
    def call_later(delay_s: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        return asyncio.get_running_loop().call_later(delay_s, callback, *args)

    @staticmethod
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds)
