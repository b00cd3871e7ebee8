"""What the daemon holds for HTTP workers: ready buffers and leases (DESIGN §5).

A ready buffer holds unacked deliveries of one job queue, ordered by OJS priority (higher
first) then arrival. A lease is an unacked delivery handed to a worker; the daemon enforces
its visibility timeout. Nothing here is durable: if the daemon dies, the broker redelivers.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage

from ojs_amqp.core.job import Job


@dataclass(slots=True)
class Delivery:
    """A buffered delivery and the job as the store had it when the delivery arrived."""

    job: Job
    queue: str
    message: AbstractIncomingMessage

    @property
    def job_id(self) -> str:
        return self.job.id


class ReadyBuffers:
    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[int, int, str]]] = {}
        self._entries: dict[str, Delivery] = {}
        self._seq = itertools.count()
        #: Jobs we published to a queue and whose delivery has not arrived yet. FETCH waits
        #: briefly for them so FIFO and queue order hold right after a push.
        self._expected: dict[str, dict[str, float]] = {}

    def add(self, delivery: Delivery) -> None:
        old = self._entries.get(delivery.job_id)
        self._entries[delivery.job_id] = delivery
        if old is None:
            heap = self._heaps.setdefault(delivery.queue, [])
            heapq.heappush(heap, (-delivery.job.priority, next(self._seq), delivery.job_id))
        self._expected.get(delivery.queue, {}).pop(delivery.job_id, None)

    def pop(self, queue: str) -> Delivery | None:
        heap = self._heaps.get(queue)
        while heap:
            _, _, job_id = heapq.heappop(heap)
            delivery = self._entries.pop(job_id, None)
            if delivery is not None and delivery.queue == queue:
                return delivery
        return None

    def remove(self, job_id: str) -> Delivery | None:
        """Take a job out (cancel); its heap slot is skipped lazily."""
        return self._entries.pop(job_id, None)

    def expect(self, queue: str, job_id: str) -> None:
        self._expected.setdefault(queue, {})[job_id] = time.monotonic()

    def awaiting(self, queues: list[str], max_age_s: float = 1.0) -> bool:
        now = time.monotonic()
        for queue in queues:
            pending = self._expected.get(queue)
            if not pending:
                continue
            for job_id, since in list(pending.items()):
                if now - since > max_age_s:
                    del pending[job_id]
                else:
                    return True
        return False

    def size(self, queue: str) -> int:
        return sum(1 for d in self._entries.values() if d.queue == queue)

    def clear(self) -> list[Delivery]:
        entries = list(self._entries.values())
        self._heaps.clear()
        self._entries.clear()
        self._expected.clear()
        return entries


@dataclass(slots=True)
class Lease:
    """An active job held by a worker. `job` is current: every move of an active job goes
    through the engine, which drops or replaces the lease."""

    job: Job
    worker_id: str | None
    message: AbstractIncomingMessage | None
    visibility_ms: int
    visibility_deadline: float
    execution_deadline: float | None
    timer: Callable[[], None] | None = field(default=None)

    @property
    def job_id(self) -> str:
        return self.job.id

    def next_deadline(self) -> tuple[float, str]:
        if (
            self.execution_deadline is not None
            and self.execution_deadline < self.visibility_deadline
        ):
            return self.execution_deadline, "timeout"
        return self.visibility_deadline, "visibility"
