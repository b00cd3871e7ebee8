"""What only the SQLite store has: its file, group commit on one connection, its schema
versions. The contract every store shares is in tests/store/test_store_contract.py."""

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from ojs_amqp.core.job import Job, JobState
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


async def test_a_store_from_a_newer_daemon_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        await SqliteJobStore(str(path)).open()


async def test_reopening_a_store_keeps_its_rows_and_version(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    first = SqliteJobStore(path)
    await first.open()
    await first.insert(_job(), published=False)
    await first.close()
    again = SqliteJobStore(path)
    await again.open()
    assert [j.id for j in await again.unpublished(10)] == [_job().id]
    await again.close()
    versions = sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchall()
    assert [v for (v,) in versions] == list(range(1, SCHEMA_VERSION + 1))
