"""SQLite job store: embedded, zero set-up, WAL journal.

Calls run directly on the event loop thread: with WAL and synchronous=NORMAL a commit needs no
fsync, which is cheaper than handing every call to a thread. Writes use group commit: every
write made in one turn of the event loop joins one transaction, committed at the start of the
next turn, and each writer resumes only once its write is committed. So a caller that acks a
broker message after `await store.update(...)` never acks ahead of its record.

A process crash loses nothing committed; a power loss can lose the last commits, and the broker
still holds every job's message, which the daemon re-adopts on delivery.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import orjson

from ojs_amqp.core.job import Job, JobState, from_record, to_record
from ojs_amqp.errors import Duplicate
from ojs_amqp.store.base import QueueInfo
from ojs_amqp.store.rows import finished_at, is_dead_letter

SCHEMA_VERSION = 3

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            queue TEXT NOT NULL,
            state TEXT NOT NULL,
            copy INTEGER NOT NULL,
            published INTEGER NOT NULL,
            dead_letter INTEGER NOT NULL,
            expires_at_ms INTEGER,
            finished_at_ms INTEGER,
            doc BLOB NOT NULL
        )""",
        "CREATE INDEX jobs_outbox ON jobs(published) WHERE published = 0",
        "CREATE INDEX jobs_dead ON jobs(finished_at_ms) WHERE dead_letter = 1",
        "CREATE INDEX jobs_expiry ON jobs(expires_at_ms) WHERE expires_at_ms IS NOT NULL "
        "AND finished_at_ms IS NULL",
        "CREATE INDEX jobs_finished ON jobs(finished_at_ms) WHERE finished_at_ms IS NOT NULL "
        "AND dead_letter = 0",
        "CREATE TABLE queues (name TEXT PRIMARY KEY, created_at_ms INTEGER NOT NULL)",
    ],
    2: [
        """CREATE TABLE crons (
            name TEXT PRIMARY KEY,
            next_run_at_ms INTEGER NOT NULL,
            doc BLOB NOT NULL
        )""",
    ],
    # Backpressure counts the open (non-terminal) jobs of a queue on pushes.
    3: ["CREATE INDEX jobs_open ON jobs(queue) WHERE finished_at_ms IS NULL"],
}

_TERMINAL = tuple(s.value for s in JobState if s.terminal)


def _row(job: Job, published: bool) -> tuple[Any, ...]:
    return (
        job.id,
        job.queue,
        job.state.value,
        job.copy,
        int(published),
        int(is_dead_letter(job)),
        job.expires_at_ms,
        finished_at(job),
        orjson.dumps(to_record(job)),
    )


def _job(doc: bytes) -> Job:
    return from_record(orjson.loads(doc))


class SqliteJobStore:
    kind = "sqlite"

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        #: Writers waiting for the open group-commit transaction; None when none is open.
        #: One future per writer, so a cancelled writer cancels only its own wait.
        self._batch: list[asyncio.Future[None]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    async def open(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0] or 0
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"store {self._path} has schema version {current}, newer than this daemon "
                f"({SCHEMA_VERSION}); upgrade ojs-amqp"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            for statement in _MIGRATIONS[version]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            db.execute("COMMIT")
        self._db = db
        self._loop = asyncio.get_running_loop()

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        """Run a write inside the current group-commit transaction."""
        db = self.db
        if not db.in_transaction:
            db.execute("BEGIN")
        if self._batch is None:
            self._batch = []
            assert self._loop is not None
            self._loop.call_soon(self._commit)
        return db.execute(sql, params)

    def _commit(self) -> None:
        waiters, self._batch = self._batch or [], None
        failure: sqlite3.Error | None = None
        try:
            if self._db is not None and self._db.in_transaction:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            failure = exc
        for waiter in waiters:
            if waiter.done():
                continue
            if failure is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(failure)

    async def _committed(self) -> None:
        """Wait for the commit of the transaction this task's write joined."""
        if self._batch is None:
            return
        assert self._loop is not None
        waiter = self._loop.create_future()
        self._batch.append(waiter)
        await waiter

    async def close(self) -> None:
        if self._batch is not None:
            self._commit()
        if self._db is not None:
            self._db.close()
            self._db = None

    async def insert(self, job: Job, *, published: bool) -> None:
        try:
            self._write("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?)", _row(job, published))
        except sqlite3.IntegrityError:
            raise Duplicate(
                f"a job with id {job.id} already exists", details={"existing_job_id": job.id}
            ) from None
        await self._committed()

    async def get(self, job_id: str) -> Job | None:
        row = self.db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row[0]) if row else None

    async def update(
        self,
        job: Job,
        *,
        expect_copy: int | None = None,
        expect_state: JobState | None = None,
        published: bool = True,
    ) -> bool:
        values = _row(job, published)
        sql = (
            "UPDATE jobs SET queue=?, state=?, copy=?, published=?, dead_letter=?, "
            "expires_at_ms=?, finished_at_ms=?, doc=? WHERE id=?"
        )
        params: tuple[Any, ...] = (*values[1:], job.id)
        if expect_copy is not None:
            sql += " AND copy=?"
            params = (*params, expect_copy)
        if expect_state is not None:
            sql += " AND state=?"
            params = (*params, expect_state.value)
        written = self._write(sql, params).rowcount == 1
        await self._committed()
        return written

    async def mark_published(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        for start in range(0, len(job_ids), 500):
            chunk = tuple(job_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            self._write(f"UPDATE jobs SET published = 1 WHERE id IN ({marks})", chunk)
        await self._committed()

    async def unpublished(self, limit: int) -> list[Job]:
        rows = self.db.execute(
            "SELECT doc FROM jobs WHERE published = 0 LIMIT ?", (limit,)
        ).fetchall()
        return [_job(r[0]) for r in rows]

    async def outbox_size(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM jobs WHERE published = 0").fetchone()[0])

    async def delete(self, job_id: str) -> bool:
        deleted = self._write("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount == 1
        await self._committed()
        return deleted

    async def dead_letters(
        self, queue: str | None, limit: int, offset: int
    ) -> tuple[list[Job], int]:
        where = "dead_letter = 1" + (" AND queue = ?" if queue else "")
        args: tuple[Any, ...] = (queue,) if queue else ()
        total = self.db.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}", args).fetchone()[0]
        rows = self.db.execute(
            f"SELECT doc FROM jobs WHERE {where} ORDER BY finished_at_ms DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return [_job(r[0]) for r in rows], int(total)

    async def expiring(self, now_ms: int, limit: int) -> list[Job]:
        rows = self.db.execute(
            "SELECT doc FROM jobs WHERE expires_at_ms IS NOT NULL AND finished_at_ms IS NULL "
            "AND expires_at_ms <= ? AND state != 'active' LIMIT ?",
            (now_ms, limit),
        ).fetchall()
        return [_job(r[0]) for r in rows]

    async def prune_finished(self, completed_before_ms: int, discarded_before_ms: int) -> int:
        cur = self._write(
            "DELETE FROM jobs WHERE finished_at_ms IS NOT NULL AND dead_letter = 0 AND "
            "((state != 'discarded' AND finished_at_ms < ?) OR "
            "(state = 'discarded' AND finished_at_ms < ?))",
            (completed_before_ms, discarded_before_ms),
        )
        await self._committed()
        return cur.rowcount

    async def prune_dead_letters(self, before_ms: int, keep_per_queue: int) -> int:
        removed = self._write(
            "DELETE FROM jobs WHERE dead_letter = 1 AND finished_at_ms < ?", (before_ms,)
        ).rowcount
        crowded = self.db.execute(
            "SELECT queue FROM jobs WHERE dead_letter = 1 GROUP BY queue HAVING COUNT(*) > ?",
            (keep_per_queue,),
        ).fetchall()
        for (queue,) in crowded:
            removed += self._write(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE dead_letter = 1 AND "
                "queue = ? ORDER BY finished_at_ms DESC, id DESC LIMIT -1 OFFSET ?)",
                (queue, keep_per_queue),
            ).rowcount
        await self._committed()
        return removed

    async def count_by_state(self) -> dict[tuple[str, str], int]:
        rows = self.db.execute("SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state")
        return {(q, s): n for q, s, n in rows}

    async def open_jobs(self, queue: str) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE queue = ? AND finished_at_ms IS NULL", (queue,)
        ).fetchone()
        return int(row[0])

    async def unfinished(self, queue: str) -> list[Job]:
        rows = self.db.execute(
            "SELECT doc FROM jobs WHERE queue = ? AND finished_at_ms IS NULL", (queue,)
        )
        return [_job(row[0]) for row in rows]

    async def delete_queue(self, queue: str) -> int:
        deleted = self._write(
            "DELETE FROM jobs WHERE queue = ? AND finished_at_ms IS NOT NULL", (queue,)
        ).rowcount
        self._write("DELETE FROM queues WHERE name = ?", (queue,))
        await self._committed()
        return deleted

    async def available(self, queue: str) -> list[Job]:
        rows = self.db.execute(
            "SELECT doc FROM jobs WHERE queue = ? AND finished_at_ms IS NULL AND state = ?",
            (queue, JobState.AVAILABLE.value),
        )
        return [_job(row[0]) for row in rows]

    async def add_queue(self, name: str, now_ms: int) -> None:
        self._write(
            "INSERT OR IGNORE INTO queues (name, created_at_ms) VALUES (?, ?)", (name, now_ms)
        )
        await self._committed()

    async def queues(self) -> list[QueueInfo]:
        rows = self.db.execute("SELECT name, created_at_ms FROM queues ORDER BY name")
        return [QueueInfo(name, created) for name, created in rows]

    async def put_cron(
        self, cron: dict[str, Any], *, expect_next_run_ms: int | None = None
    ) -> bool:
        """Insert or replace a cron definition. With `expect_next_run_ms`, only if the stored
        next run is still that (compare-and-set, so one tick fires once)."""
        doc = orjson.dumps(cron)
        if expect_next_run_ms is None:
            self._write(
                "INSERT OR REPLACE INTO crons (name, next_run_at_ms, doc) VALUES (?, ?, ?)",
                (cron["name"], cron["next_run_at_ms"], doc),
            )
            written = True
        else:
            written = (
                self._write(
                    "UPDATE crons SET next_run_at_ms = ?, doc = ? WHERE name = ? "
                    "AND next_run_at_ms = ?",
                    (cron["next_run_at_ms"], doc, cron["name"], expect_next_run_ms),
                ).rowcount
                == 1
            )
        await self._committed()
        return written

    async def get_cron(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT doc FROM crons WHERE name = ?", (name,)).fetchone()
        return orjson.loads(row[0]) if row else None

    async def crons(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT doc FROM crons ORDER BY name").fetchall()
        return [orjson.loads(r[0]) for r in rows]

    async def due_crons(self, now_ms: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT doc FROM crons WHERE next_run_at_ms <= ? ORDER BY next_run_at_ms", (now_ms,)
        ).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    async def delete_cron(self, name: str) -> bool:
        deleted = self._write("DELETE FROM crons WHERE name = ?", (name,)).rowcount == 1
        await self._committed()
        return deleted

    async def reset(self) -> None:
        self._write("DELETE FROM crons", ())
        self._write("DELETE FROM jobs", ())
        self._write("DELETE FROM queues", ())
        await self._committed()
