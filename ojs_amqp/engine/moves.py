"""The one move rule, and copies that arrive before their move is recorded.

Every move between states: publish the next copy with a confirm, then record it in the
store, then ack the current copy. A crash between the steps leaves at worst a duplicate
copy, which is dropped on delivery because its copy number is stale.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.engine.ports import Delivery, JobRecords, JobTransport, Scheduler
from ojs_amqp.engine.queues import QueueRegistry
from ojs_amqp.engine.tasks import Tasks
from ojs_amqp.metrics import Metrics


def _nothing(job: Job) -> None:
    return None


class Mover:
    def __init__(
        self,
        transport: JobTransport,
        store: JobRecords,
        queues: QueueRegistry,
        scheduler: Scheduler,
        tasks: Tasks,
        metrics: Metrics,
    ) -> None:
        self._transport = transport
        self._store = store
        self._queues = queues
        self._scheduler = scheduler
        self._tasks = tasks
        self._metrics = metrics
        #: Told of each available copy published (the gateway expects its delivery).
        self.publishing_available: Callable[[Job], None] = _nothing
        #: job id -> copy number being published and recorded right now, and deliveries of
        #: that copy that arrived before the record (re-run once it is written).
        self._recording: dict[str, int] = {}
        self._deferred: dict[str, list[Coroutine[Any, Any, None]]] = {}

    def settle(self, delivery: Delivery | None) -> None:
        """Ack a delivery; if its channel is gone the broker redelivers it, and the stale-copy
        check on delivery drops it then."""
        if delivery is not None and not delivery.handle.settled:
            delivery.handle.ack()
            self._metrics.acked()

    async def publish_copy(self, job: Job) -> None:
        """Publish the broker copy that represents the job's (new) state, if it has one."""
        state = job.state
        if state is JobState.AVAILABLE:
            await self._queues.outlived_its_queue(job)
            self.publishing_available(job)
            await self._transport.publish_available(job)
        elif state is JobState.SCHEDULED:
            await self.park(job, job.scheduled_at_ms or self._scheduler.now_ms())
        elif state is JobState.RETRYABLE:
            await self.park(job, job.next_attempt_at_ms or self._scheduler.now_ms())
        elif state is JobState.DISCARDED:
            await self._queues.outlived_its_queue(job)
            await self._transport.publish_discarded(job)

    async def park(self, job: Job, due_at_ms: int) -> None:
        """Put a waiting job on the delay ladder (or straight into the due queue)."""
        await self._transport.park(job, due_at_ms, due_at_ms - self._scheduler.now_ms())

    async def advance(
        self,
        new: Job,
        current: Delivery | None,
        expect_copy: int,
        expect_state: JobState | None = None,
    ) -> bool:
        """Publish the next copy, record it, then ack the current copy.

        Between the publish and the record, the new copy can already be delivered back to
        us; such a delivery waits (see `wait_for_record`) instead of being judged against
        the old row.
        """
        self._recording[new.id] = new.copy
        try:
            await self.publish_copy(new)
            written = await self._store.update(
                new, expect_copy=expect_copy, expect_state=expect_state
            )
        finally:
            # (two moves of one job may overlap, e.g. a timer redelivered after a reconnect
            # while its first delivery is still firing: the first to finish removes the mark)
            self._recording.pop(new.id, None)
            for redo in self._deferred.pop(new.id, []):
                self._tasks.spawn(redo)
        if written:
            self.settle(current)
        return written

    def wait_for_record(self, delivery: Delivery, redo: Coroutine[Any, Any, None]) -> bool:
        """Defer a delivery of a copy whose move is still being recorded; True if deferred."""
        job_id = delivery.job_id
        if job_id is None or delivery.copy is None or self._recording.get(job_id) != delivery.copy:
            redo.close()
            return False
        self._deferred.setdefault(job_id, []).append(redo)
        return True

    def moving(self) -> list[str]:
        """Jobs whose next copy is being published and recorded now."""
        return list(self._recording)
