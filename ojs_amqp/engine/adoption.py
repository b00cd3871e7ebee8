"""Adoption: jobs that reached a job queue without us (binding PUSH by another AMQP client,
or a native worker's report on a job never seen) go into the store, as available."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import Any

import orjson

from ojs_amqp.core.envelope import parse_enqueue
from ojs_amqp.core.ids import UUIDv7Generator, is_uuidv7
from ojs_amqp.core.job import SYSTEM_FIELDS, Job, JobState
from ojs_amqp.core.times import parse_rfc3339_ms
from ojs_amqp.engine.outcomes import Outcomes
from ojs_amqp.engine.ports import Delivery, JobRecords, Scheduler
from ojs_amqp.engine.progress import Progress
from ojs_amqp.errors import Duplicate, InvalidRequest, NotFound, OjsError

log = logging.getLogger("ojs_amqp.engine")


class Adoption:
    def __init__(
        self,
        store: JobRecords,
        scheduler: Scheduler,
        outcomes: Outcomes,
        progress: Progress,
        ids: UUIDv7Generator,
    ) -> None:
        self._store = store
        self._scheduler = scheduler
        self._outcomes = outcomes
        self._progress = progress
        self._ids = ids

    async def adopt(self, queue: str, delivery: Delivery) -> Job | None:
        """A delivery on a job queue that the store does not know: adopted, or (not a valid
        envelope) dead-lettered with a warning."""
        try:
            return await self.envelope(orjson.loads(delivery.body), delivery.job_id, queue)
        except (orjson.JSONDecodeError, OjsError) as exc:
            log.warning("rejecting an invalid message on queue %s: %s", queue, exc)
            delivery.handle.reject(requeue=False)
            return None

    async def envelope(self, body: Any, job_id: str | None, queue: str | None) -> Job:
        """Store a job that reached a job queue without us, as available."""
        job = self.job_of(body, job_id, queue)
        self.announce(job)  # before the insert: tracing may add meta.traceparent
        try:
            await self._store.insert(job, published=True)
        except Duplicate:  # adopted meanwhile by another delivery or report
            return await self._progress.read(job.id)
        return job

    async def known_or_adopted(
        self, job_id: str, envelope: dict[str, Any] | None, queue: str | None
    ) -> Job:
        job = await self._store.get(job_id)
        if job is not None:
            return job
        if envelope is None:
            raise NotFound(
                f"job {job_id} not found, and the message carries no envelope to adopt it from",
                details={"resource_type": "job", "resource_id": job_id},
            )
        return await self.envelope(envelope, job_id, queue)

    def job_of(self, body: Any, job_id: str | None, queue: str | None) -> Job:
        """Validate an envelope that reached a job queue without us: the job, available.

        Lenient where only the store cares: a third-party id need not be a UUIDv7, just
        unique; system fields the sender copied in are ignored.
        """
        if not isinstance(body, dict):
            raise InvalidRequest("a job message body must be a JSON object (the OJS envelope)")
        job_id = job_id or (body["id"] if isinstance(body.get("id"), str) else None)
        fields = {k: v for k, v in body.items() if k != "id" and k not in SYSTEM_FIELDS}
        if job_id is not None and is_uuidv7(job_id):
            fields["id"] = job_id
        now = self._scheduler.now_ms()
        job = parse_enqueue(fields, now_ms=now, new_id=self._ids.new(now))
        if job_id is not None and not 0 < len(job_id) <= 255:
            raise InvalidRequest("a job id must be 1 to 255 characters", details={"field": "id"})
        created = _past_time(body.get("created_at"), now)
        return replace(
            job, id=job_id or job.id, queue=queue or job.queue, state=JobState.AVAILABLE,
            created_at_ms=created, enqueued_at_ms=created, scheduled_at_ms=None,
        )  # fmt: skip

    def announce(self, adopted: Job) -> None:
        self._outcomes.adopted(adopted, self._scheduler.now_ms())


def _past_time(value: Any, now_ms: int) -> int:
    """A producer's RFC 3339 timestamp if it is readable and not in the future, else now."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError, OverflowError):
            return min(parse_rfc3339_ms(value), now_ms)
    return now_ms
