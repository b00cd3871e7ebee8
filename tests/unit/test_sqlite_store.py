import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.errors import Duplicate
from ojs_amqp.store.sqlite import SCHEMA_VERSION, SqliteJobStore


def _job(n: int = 1, **changes: object) -> Job:
    job = Job(id=f"019a0000-0000-7000-8000-{n:012d}", type="t.x", queue="q", args=[n],
              state=JobState.AVAILABLE, created_at_ms=1_000 + n)  # fmt: skip
    return replace(job, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    s = SqliteJobStore(str(tmp_path / "jobs.db"))
    await s.open()
    yield s
    await s.close()


async def test_a_job_reads_back_exactly_as_written(store: SqliteJobStore) -> None:
    job = _job(meta={"k": [1, 2]}, extra={"x_custom": True})
    await store.insert(job, published=True)
    assert await store.get(job.id) == job


async def test_a_second_insert_with_the_same_id_is_a_duplicate(store: SqliteJobStore) -> None:
    await store.insert(_job(), published=True)
    with pytest.raises(Duplicate):
        await store.insert(_job(), published=True)


async def test_update_with_a_stale_copy_number_writes_nothing(store: SqliteJobStore) -> None:
    job = _job()
    await store.insert(job, published=True)
    moved = replace(job, state=JobState.CANCELLED, copy=2)
    assert await store.update(moved, expect_copy=1)
    assert not await store.update(replace(job, state=JobState.ACTIVE), expect_copy=1)
    assert (await store.get(job.id)).state is JobState.CANCELLED  # type: ignore[union-attr]


async def test_a_state_check_refuses_a_move_of_a_job_leased_on_the_same_copy(
    store: SqliteJobStore,
) -> None:
    """A lease keeps the copy number, so a republish read before it must check the state."""
    job = _job()
    await store.insert(job, published=True)
    assert await store.update(replace(job, state=JobState.ACTIVE), expect_copy=1)
    republished = replace(job, copy=2)
    assert not await store.update(republished, expect_copy=1, expect_state=JobState.AVAILABLE)
    assert (await store.get(job.id)).state is JobState.ACTIVE  # type: ignore[union-attr]


async def test_outbox_rows_stay_unpublished_until_marked(store: SqliteJobStore) -> None:
    await store.insert(_job(1), published=False)
    await store.insert(_job(2), published=True)
    assert [j.id for j in await store.unpublished(10)] == [_job(1).id]
    await store.mark_published([_job(1).id])
    assert await store.unpublished(10) == []


async def test_writes_of_one_loop_turn_commit_together_before_writers_resume(
    store: SqliteJobStore, tmp_path: Path
) -> None:
    """Each writer, as it resumes, already sees (from another connection) every write of its
    turn committed (resuming before the commit would see 0), and the turn's writes were one
    transaction: one COMMIT for all 20."""
    other = sqlite3.connect(tmp_path / "jobs.db")
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)

    async def insert_then_count(n: int) -> int:
        await store.insert(_job(n), published=True)
        return int(other.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    assert await asyncio.gather(*(insert_then_count(n) for n in range(20))) == [20] * 20
    assert statements.count("COMMIT") == 1
    # and a write of a later turn is a transaction of its own
    assert await insert_then_count(20) == 21
    assert statements.count("COMMIT") == 2
    other.close()


async def test_dead_letters_list_only_dead_lettered_discards(store: SqliteJobStore) -> None:
    dead = _job(1, state=JobState.DISCARDED, dead_letter=True, discarded_at_ms=5)
    plain = _job(2, state=JobState.DISCARDED, discarded_at_ms=5)
    await store.insert(dead, published=True)
    await store.insert(plain, published=True)
    jobs, total = await store.dead_letters(None, 10, 0)
    assert [j.id for j in jobs] == [dead.id] and total == 1


async def test_retention_prunes_finished_jobs_but_keeps_dead_letters(store: SqliteJobStore) -> None:
    await store.insert(_job(1, state=JobState.COMPLETED, completed_at_ms=10), published=True)
    await store.insert(_job(2, state=JobState.DISCARDED, dead_letter=True, discarded_at_ms=10),
                       published=True)  # fmt: skip
    await store.insert(_job(3), published=True)
    assert await store.prune_finished(100, 100) == 1
    assert await store.get(_job(1).id) is None
    assert await store.get(_job(2).id) is not None and await store.get(_job(3).id) is not None


async def test_expiring_finds_only_waiting_jobs_past_their_expiry(store: SqliteJobStore) -> None:
    await store.insert(_job(1, expires_at_ms=50), published=True)
    await store.insert(_job(2, expires_at_ms=500), published=True)
    await store.insert(_job(3, expires_at_ms=50, state=JobState.ACTIVE), published=True)
    assert [j.id for j in await store.expiring(100, 10)] == [_job(1).id]


async def test_a_store_from_a_newer_daemon_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        await SqliteJobStore(str(path)).open()


async def test_open_jobs_and_available_list_only_what_is_still_waiting_in_a_queue(
    store: SqliteJobStore,
) -> None:
    waiting = _job(1)
    running = _job(2, state=JobState.ACTIVE)
    done = _job(3, state=JobState.COMPLETED, completed_at_ms=5)
    elsewhere = _job(4, queue="other")
    for job in (waiting, running, done, elsewhere):
        await store.insert(job, published=True)
    assert await store.open_jobs(waiting.queue) == 2
    assert [j.id for j in await store.available(waiting.queue)] == [waiting.id]


async def test_dead_letter_retention_removes_the_old_and_all_but_the_newest_of_each_queue(
    store: SqliteJobStore,
) -> None:
    def dead(n: int, at: int, queue: str = "q") -> Job:
        return _job(n, queue=queue, state=JobState.DISCARDED, dead_letter=True,
                    discarded_at_ms=at, completed_at_ms=at)  # fmt: skip

    for n, at in [(1, 10), (2, 200), (3, 300), (4, 400)]:
        await store.insert(dead(n, at), published=True)
    await store.insert(dead(5, 500, queue="other"), published=True)
    await store.insert(_job(6, state=JobState.COMPLETED, completed_at_ms=10), published=True)

    # older than 100: job 1; beyond the newest 2 of queue q: job 2; queue other is small
    assert await store.prune_dead_letters(100, keep_per_queue=2) == 2
    jobs, total = await store.dead_letters(None, 10, 0)
    assert [j.id for j in jobs] == [dead(5, 0).id, dead(4, 0).id, dead(3, 0).id] and total == 3
    assert await store.get(_job(6).id) is not None  # not a dead letter: prune_finished's


# --- deleting a queue: its unfinished jobs, then its row and finished jobs -------------


async def test_deleting_a_queue_removes_its_row_and_finished_jobs_only(
    store: SqliteJobStore,
) -> None:
    await store.add_queue("mail", 1)
    await store.add_queue("other", 1)
    jobs = [
        _job(1, queue="mail", state=JobState.PENDING),
        _job(2, queue="mail", state=JobState.SCHEDULED, scheduled_at_ms=9_999),
        _job(3, queue="mail", state=JobState.ACTIVE),
        _job(4, queue="mail", state=JobState.COMPLETED, completed_at_ms=10),
        _job(5, queue="mail", state=JobState.DISCARDED, dead_letter=True, discarded_at_ms=10),
        _job(6, queue="mail", state=JobState.CANCELLED, cancelled_at_ms=10),
        _job(7, queue="other", state=JobState.COMPLETED, completed_at_ms=10),
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
