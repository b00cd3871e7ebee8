"""The producer: push (admit, store in the outbox, publish, announce) and the outbox.

A push is stored first with `published=False`, then published with a confirm; the outbox
flag is cleared in batches (`flush_published`). A daemon that dies in between replays the
rows on start (`replay_outbox`); a duplicate copy is dropped on delivery by its copy number.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ojs_amqp.core.envelope import parse_enqueue
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.job import Job, JobState
from ojs_amqp.engine.admission import Admission
from ojs_amqp.engine.moves import Mover
from ojs_amqp.engine.outcomes import Outcomes
from ojs_amqp.engine.ports import JobRecords, Outbox, Scheduler
from ojs_amqp.errors import OjsError

log = logging.getLogger("ojs_amqp.engine")

#: Outbox rows replayed per store read.
REPLAY_BATCH = 500


class ProducerStore(JobRecords, Outbox, Protocol):
    """The store roles the producer uses."""


class Producer:
    def __init__(
        self,
        store: ProducerStore,
        scheduler: Scheduler,
        mover: Mover,
        admission: Admission,
        outcomes: Outcomes,
        ids: UUIDv7Generator,
    ) -> None:
        self._store = store
        self._now = scheduler.now_ms
        self._mover = mover
        self._admission = admission
        self._outcomes = outcomes
        self._ids = ids
        self._unpublished: list[str] = []

    async def push(self, body: Any) -> Job:
        now = self._now()
        job = parse_enqueue(body, now_ms=now, new_id=self._ids.new(now))
        await self._admission.admit(job.queue)
        span = self._outcomes.trace_enqueue(job)
        needs_publish = job.state is not JobState.PENDING
        await self._store.insert(job, published=not needs_publish)
        if needs_publish:
            try:
                await self._mover.publish_copy(job)
            except OjsError as exc:
                # Not accepted, and the producer is told (503 / 429). Had the message reached
                # its queue after all, its delivery is adopted like any binding push.
                await self._store.delete(job.id)
                if span is not None:
                    span.end(exc)
                raise
            self._unpublished.append(job.id)
        self._admission.admitted(job.queue)
        self._outcomes.enqueued(job, now, span)
        return job

    async def validate(self, body: Any) -> None:
        """Check an envelope as push would, without enqueuing anything."""
        now = self._now()
        parse_enqueue(body, now_ms=now, new_id=self._ids.new(now))

    async def flush_published(self) -> None:
        ids, self._unpublished = self._unpublished, []
        await self._store.mark_published(ids)

    async def replay_outbox(self) -> None:
        """Publish rows whose copy was never confirmed (the daemon died mid-push)."""
        while batch := await self._store.unpublished(REPLAY_BATCH):
            for job in batch:
                await self._mover.publish_copy(job)
            await self._store.mark_published([j.id for j in batch])
            log.info("replayed %d unpublished jobs from the outbox", len(batch))

    def reset(self) -> None:
        self._unpublished.clear()
