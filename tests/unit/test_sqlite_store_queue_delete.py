"""The store's side of deleting a queue: its unfinished jobs, then its row and finished jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.store.sqlite import SqliteJobStore


def _job(n: int, queue: str, state: JobState, **changes: object) -> Job:
    job = Job(id=f"019a0000-0000-7000-8000-{n:012d}", type="t.x", queue=queue, args=[n],
              state=state, created_at_ms=1_000 + n)  # fmt: skip
    return replace(job, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    s = SqliteJobStore(str(tmp_path / "jobs.db"))
    await s.open()
    yield s
    await s.close()


async def test_deleting_a_queue_removes_its_row_and_finished_jobs_only(
    store: SqliteJobStore,
) -> None:
    await store.add_queue("mail", 1)
    await store.add_queue("other", 1)
    jobs = [
        _job(1, "mail", JobState.PENDING),
        _job(2, "mail", JobState.SCHEDULED, scheduled_at_ms=9_999),
        _job(3, "mail", JobState.ACTIVE),
        _job(4, "mail", JobState.COMPLETED, completed_at_ms=10),
        _job(5, "mail", JobState.DISCARDED, dead_letter=True, discarded_at_ms=10),
        _job(6, "mail", JobState.CANCELLED, cancelled_at_ms=10),
        _job(7, "other", JobState.COMPLETED, completed_at_ms=10),
    ]
    for job in jobs:
        await store.insert(job, published=True)
    assert sorted(j.id for j in await store.unfinished("mail")) == [j.id for j in jobs[:3]]
    assert await store.delete_queue("mail") == 3
    assert [q.name for q in await store.queues()] == ["other"]
    assert sorted(j.id for j in await store.unfinished("mail")) == [j.id for j in jobs[:3]]
    for job in jobs[3:6]:
        assert await store.get(job.id) is None
    assert await store.get(jobs[6].id) is not None
    assert await store.delete_queue("mail") == 0
