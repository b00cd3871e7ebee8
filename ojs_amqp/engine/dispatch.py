"""What the daemon holds for HTTP workers: ready buffers and leases (docs/architecture.md).

A ready buffer holds unacked deliveries of one job queue, ordered by OJS priority (higher
first) then arrival. A lease is an unacked delivery handed to a worker; the daemon enforces
its visibility timeout. Nothing here is durable: if the daemon dies, the broker redelivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ojs_amqp.clock import now_ms
from ojs_amqp.core.job import Job
from ojs_amqp.engine.kinds import LeaseKind
from ojs_amqp.engine.ports import Delivery, LoopScheduler, Scheduler


@dataclass(slots=True)
class Buffered:
    """A buffered delivery and the job as the store had it when the delivery arrived."""

    job: Job
    queue: str
    message: Delivery
    #: When it arrived (monotonic): the broker's consumer_timeout counts from there.
    since: float = field(default_factory=time.monotonic)
    #: Its place in line among the queue's jobs of equal priority (set by ReadyBuffers).
    place: int = 0

    @property
    def job_id(self) -> str:
        return self.job.id


class ReadyBuffers:
    #: Expected jobs remembered per queue; beyond this the oldest are forgotten (they are
    #: then read from the store on delivery, which is only slower).
    EXPECT_LIMIT = 10_000
    #: Places in line remembered for jobs handed back to the broker to refresh their
    #: delivery; beyond this the oldest are forgotten (those jobs queue up again at the end).
    PLACES_LIMIT = 100_000

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._mono = monotonic
        self._heaps: dict[str, list[tuple[int, int, str]]] = {}
        self._entries: dict[str, Buffered] = {}
        self._sizes: dict[str, int] = {}
        self._seq = itertools.count()
        #: Jobs we published to a queue whose delivery has not arrived yet, oldest first.
        #: FETCH waits briefly for them when their queue's buffer is empty, so FIFO and queue
        #: order hold right after a push; the delivery handler takes the job from here
        #: instead of reading the store.
        self._expected: dict[str, dict[str, tuple[float, Job]]] = {}
        #: job id -> place in line, for jobs taken out by `take_older_than`.
        self._places: dict[str, int] = {}
        #: Per queue, jobs taken out by `take_older_than` to be renewed, and since when
        #: (monotonic): FETCH waits briefly for them, since they keep their place in line.
        self._renewing: dict[str, dict[str, float]] = {}

    def add(self, delivery: Buffered) -> None:
        old = self._entries.get(delivery.job_id)
        self._entries[delivery.job_id] = delivery
        if old is None:
            self._renewing.get(delivery.queue, {}).pop(delivery.job_id, None)
            place = self._places.pop(delivery.job_id, None)
            delivery.place = next(self._seq) if place is None else place
            heap = self._heaps.setdefault(delivery.queue, [])
            heapq.heappush(heap, (-delivery.job.priority, delivery.place, delivery.job_id))
            self._sizes[delivery.queue] = self._sizes.get(delivery.queue, 0) + 1
        else:
            delivery.place = old.place

    def take_older_than(self, cutoff: float) -> list[Buffered]:
        """Take out the deliveries that arrived before `cutoff` (monotonic), to renew them
        (a fresh copy through the broker); delivered again, they keep their place in line."""
        old = [d for d in self._entries.values() if d.since < cutoff]
        now = self._mono()
        for delivery in old:
            self._forget(delivery)
            self._places[delivery.job_id] = delivery.place
            self._renewing.setdefault(delivery.queue, {})[delivery.job_id] = now
        while len(self._places) > self.PLACES_LIMIT:
            del self._places[next(iter(self._places))]
        return old

    def take_queue(self, queue: str) -> list[Buffered]:
        """Take out every delivery of one queue, in the order FETCH would hand them out."""
        taken = sorted(
            (d for d in self._entries.values() if d.queue == queue),
            key=lambda d: (-d.job.priority, d.place),
        )
        for delivery in taken:
            self._forget(delivery)
        return taken

    def pop(self, queue: str) -> Buffered | None:
        heap = self._heaps.get(queue)
        while heap:
            _, _, job_id = heapq.heappop(heap)
            delivery = self._entries.get(job_id)
            if delivery is not None and delivery.queue == queue:
                self._forget(delivery)
                return delivery
        return None

    def remove(self, job_id: str) -> Buffered | None:
        """Take a job out (cancel); its heap slot is skipped lazily."""
        delivery = self._entries.get(job_id)
        if delivery is not None:
            self._forget(delivery)
        return delivery

    def _forget(self, delivery: Buffered) -> None:
        del self._entries[delivery.job_id]
        self._sizes[delivery.queue] -= 1

    def expect(self, job: Job) -> None:
        pending = self._expected.setdefault(job.queue, {})
        pending.pop(job.id, None)
        pending[job.id] = (self._mono(), job)
        if len(pending) > self.EXPECT_LIMIT:
            del pending[next(iter(pending))]

    def take_expected(self, queue: str, job_id: str) -> Job | None:
        entry = self._expected.get(queue, {}).pop(job_id, None)
        return entry[1] if entry is not None else None

    def awaiting(self, queues: list[str], max_age_s: float = 1.0) -> bool:
        """Whether a requested queue is empty here but has a job on its way, or has a job
        being renewed (it comes back to its old place in line, perhaps ahead of the rest)."""
        cutoff = self._mono() - max_age_s
        for queue in queues:
            renewing = self._renewing.get(queue)
            while renewing:
                job_id, since = next(iter(renewing.items()))
                if since >= cutoff:
                    return True
                del renewing[job_id]
            pending = self._expected.get(queue)
            if not pending or self._sizes.get(queue, 0) > 0:
                continue
            while pending:
                job_id, (since, _) = next(iter(pending.items()))
                if since >= cutoff:
                    return True
                del pending[job_id]
        return False

    def drop_queue(self, queue: str) -> None:
        """Forget one queue's deliveries (its consumer channel was closed: they are void)."""
        for delivery in [d for d in self._entries.values() if d.queue == queue]:
            self._forget(delivery)
        self._heaps.pop(queue, None)
        self._expected.pop(queue, None)
        self._renewing.pop(queue, None)

    def sizes(self) -> dict[str, int]:
        """Buffered deliveries per queue (unacked, waiting for a FETCH)."""
        return {queue: size for queue, size in self._sizes.items() if size}

    def clear(self) -> list[Buffered]:
        entries = list(self._entries.values())
        self._heaps.clear()
        self._entries.clear()
        self._sizes.clear()
        self._expected.clear()
        self._places.clear()
        self._renewing.clear()
        return entries


class Arrivals:
    """FETCHes waiting for a delivery, per queue. An arrival wakes one of them, the longest
    waiting, rather than every waiter (which would each look, and all but one go back to
    sleep)."""

    def __init__(self, scheduler: Scheduler | None = None) -> None:
        self._scheduler = scheduler if scheduler is not None else LoopScheduler(now_ms)
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    async def wait(self, queues: list[str], deadline: float) -> None:
        """Until a delivery arrives on one of `queues` or the monotonic `deadline` passes."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        for queue in queues:
            self._waiting.setdefault(queue, deque()).append(woken)
        delay = max(0.0, deadline - self._scheduler.monotonic())
        timer = self._scheduler.call_later(delay, _wake, woken)
        try:
            await woken
        finally:
            timer.cancel()
            for queue in queues:
                waiting = self._waiting.get(queue)
                if waiting is not None:
                    with contextlib.suppress(ValueError):
                        waiting.remove(woken)
                    if not waiting:
                        del self._waiting[queue]

    def arrived(self, queue: str) -> None:
        waiting = self._waiting.get(queue)
        while waiting:
            woken = waiting.popleft()
            if not woken.done():
                woken.set_result(None)
                return


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


@dataclass(slots=True)
class Lease:
    """An active job held by a worker. `job` is current: every move of an active job goes
    through the engine, which drops or replaces the lease."""

    job: Job
    worker_id: str | None
    message: Delivery | None
    visibility_ms: int
    visibility_deadline: float
    execution_deadline: float | None
    timer: Callable[[], None] | None = field(default=None)
    #: Since when `message` has been held unacked (monotonic); None once it is acked and a
    #: lease timer on the delay ladder stands in for it (`Leases.hand_over`).
    held_since: float | None = field(default_factory=time.monotonic)

    @property
    def job_id(self) -> str:
        return self.job.id

    def next_deadline(self) -> tuple[float, LeaseKind]:
        if (
            self.execution_deadline is not None
            and self.execution_deadline < self.visibility_deadline
        ):
            return self.execution_deadline, LeaseKind.TIMEOUT
        return self.visibility_deadline, LeaseKind.VISIBILITY

    def next_event(self, hold_s: float) -> tuple[float, LeaseKind]:
        """The next deadline, or "handover" when the delivery would be held longer than
        `hold_s` before it."""
        deadline, kind = self.next_deadline()
        if self.message is not None and self.held_since is not None:
            handover = self.held_since + hold_s
            if handover < deadline:
                return handover, LeaseKind.HANDOVER
        return deadline, kind
