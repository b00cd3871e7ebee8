"""The admin API's reads over the job store: jobs filtered by queue, state, type and creation
time, dead letters with filters, and the counts dashboards poll. Every filter is served by an
index (no scan of the jobs table): `AdminQueries` is the port, `SqliteAdminQueries` its SQLite
adapter, which adds the indexes it needs when it opens (`CREATE INDEX IF NOT EXISTS`).

The port is async so that a networked store can serve it: the PostgreSQL adapter
(store/postgres/admin_queries.py) runs the same queries over the indexes of its migration
0002. The SQLite adapter's SQL stays synchronous inside its async methods (a local read of
an index takes microseconds; a thread hop would cost more than it saves).
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ojs_amqp.core.job import Job, from_record


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Which jobs: every field optional. `type_prefix` matches `type` values that start with
    it (the spec's `email.*`); `since`/`until` bound the creation time (ms, inclusive /
    exclusive); `dead_letter` restricts to dead letters (their time is when they died)."""

    queue: str | None = None
    states: tuple[str, ...] = ()
    type: str | None = None
    type_prefix: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    dead_letter: bool = False
    ids: tuple[str, ...] = ()
    #: Order by the time a scheduled job is due, not by creation (the scheduled view).
    by_due_time: bool = False
    #: Finished before this time (ms): purges.
    finished_before_ms: int | None = None


class AdminQueries(Protocol):
    """What the admin API reads from the store (and its one table of its own)."""

    async def jobs(
        self, query: JobQuery, limit: int, offset: int, newest_first: bool
    ) -> tuple[list[Job], int]:
        """One page of matching jobs in creation order (dead letters: in order of death),
        and how many match in all."""
        ...

    async def page(self, query: JobQuery, limit: int, offset: int, newest_first: bool) -> list[Job]:
        """One page of matching jobs, as `jobs` orders them."""
        ...

    async def count(self, query: JobQuery, at_most: int | None = None) -> int:
        """How many jobs match, counting no further than `at_most` (None: all)."""
        ...

    async def job_ids(self, query: JobQuery, limit: int) -> list[str]:
        """Up to `limit` matching ids, oldest first (bulk actions walk them)."""
        ...

    async def counts(self, queue: str | None = None) -> dict[tuple[str, str], int]:
        """(queue, state) -> number of jobs, for one queue or all."""
        ...

    async def dead_letter_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Dead letters by queue, and by the code of their last error."""
        ...

    async def oldest_available_ms(self, queue: str) -> int | None: ...

    async def queue_config(self, queue: str | None = None) -> dict[str, dict[str, Any]]:
        """Run-time configuration set through the admin API: queue -> settings."""
        ...

    async def put_queue_config(self, queue: str, config: dict[str, Any]) -> None: ...

    async def reset(self) -> None:
        """Forget every queue's configuration (test mode's reset)."""
        ...

    async def explain(self, query: JobQuery) -> list[str]:
        """The store's plan for a job page (tests check that an index serves it)."""
        ...


_DOC = "CAST(doc AS TEXT)"
TYPE = f"json_extract({_DOC}, '$.type')"
CREATED = f"json_extract({_DOC}, '$.created_at_ms')"
SCHEDULED = f"json_extract({_DOC}, '$.scheduled_at_ms')"
ERROR_CODE = f"json_extract({_DOC}, '$.error.code')"

#: The indexes the admin reads need, beside the store's own (jobs_dead serves dead letters
#: by time). Expression indexes: no column is added to the store's table.
INDEXES = (
    f"CREATE INDEX IF NOT EXISTS admin_jobs_queue_state ON jobs(queue, state, {CREATED})",
    f"CREATE INDEX IF NOT EXISTS admin_jobs_state ON jobs(state, {CREATED})",
    f"CREATE INDEX IF NOT EXISTS admin_jobs_state_due ON jobs(state, {SCHEDULED})",
    f"CREATE INDEX IF NOT EXISTS admin_jobs_queue ON jobs(queue, {CREATED})",
    f"CREATE INDEX IF NOT EXISTS admin_jobs_type ON jobs({TYPE}, {CREATED})",
    f"CREATE INDEX IF NOT EXISTS admin_jobs_created ON jobs({CREATED})",
    "CREATE INDEX IF NOT EXISTS admin_dead_queue ON jobs(queue, finished_at_ms) "
    "WHERE dead_letter = 1",
    f"CREATE INDEX IF NOT EXISTS admin_dead_type ON jobs({TYPE}, finished_at_ms) "
    "WHERE dead_letter = 1",
    f"CREATE INDEX IF NOT EXISTS admin_dead_error ON jobs({ERROR_CODE}) WHERE dead_letter = 1",
    "CREATE TABLE IF NOT EXISTS admin_queue_config (queue TEXT PRIMARY KEY, doc BLOB NOT NULL)",
)


def _where(query: JobQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if query.dead_letter:
        clauses.append("dead_letter = 1")
    if query.queue is not None:
        clauses.append("queue = ?")
        args.append(query.queue)
    if query.states:
        clauses.append(f"state IN ({','.join('?' * len(query.states))})")
        args.extend(query.states)
    if query.type is not None:
        clauses.append(f"{TYPE} = ?")
        args.append(query.type)
    if query.type_prefix is not None:
        clauses.append(f"{TYPE} >= ? AND {TYPE} < ?")
        args.extend((query.type_prefix, query.type_prefix + "\U0010ffff"))
    time = "finished_at_ms" if query.dead_letter else CREATED
    if query.since_ms is not None:
        clauses.append(f"{time} >= ?")
        args.append(query.since_ms)
    if query.until_ms is not None:
        clauses.append(f"{time} < ?")
        args.append(query.until_ms)
    if query.finished_before_ms is not None:
        clauses.append("finished_at_ms < ?")
        args.append(query.finished_before_ms)
    if query.ids:
        clauses.append(f"id IN ({','.join('?' * len(query.ids))})")
        args.extend(query.ids)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _order(query: JobQuery, newest_first: bool) -> str:
    time = "finished_at_ms" if query.dead_letter else SCHEDULED if query.by_due_time else CREATED
    direction = "DESC" if newest_first else "ASC"
    return f" ORDER BY {time} {direction}, id {direction}"


class SqliteAdminQueries:
    """Over an open SqliteJobStore's connection. Reads run on the event loop thread, as the
    store's own do; the one write (queue configuration) joins the store's transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        for statement in INDEXES:
            db.execute(statement)

    async def jobs(
        self, query: JobQuery, limit: int, offset: int, newest_first: bool
    ) -> tuple[list[Job], int]:
        return await self.page(query, limit, offset, newest_first), await self.count(query)

    async def page(self, query: JobQuery, limit: int, offset: int, newest_first: bool) -> list[Job]:
        where, args = _where(query)
        rows = self._db.execute(
            f"SELECT doc FROM jobs{where}{_order(query, newest_first)} LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return [from_record(orjson.loads(r[0])) for r in rows]

    async def count(self, query: JobQuery, at_most: int | None = None) -> int:
        where, args = _where(query)
        if at_most is None:
            sql = f"SELECT COUNT(*) FROM jobs{where}"
        else:
            sql = f"SELECT COUNT(*) FROM (SELECT 1 FROM jobs{where} LIMIT {int(at_most)})"
        return int(self._db.execute(sql, args).fetchone()[0])

    async def job_ids(self, query: JobQuery, limit: int) -> list[str]:
        where, args = _where(query)
        rows = self._db.execute(
            f"SELECT id FROM jobs{where}{_order(query, False)} LIMIT ?", (*args, limit)
        )
        return [r[0] for r in rows]

    async def counts(self, queue: str | None = None) -> dict[tuple[str, str], int]:
        if queue is None:
            rows = self._db.execute("SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state")
        else:
            rows = self._db.execute(
                "SELECT queue, state, COUNT(*) FROM jobs WHERE queue = ? GROUP BY state", (queue,)
            )
        return {(q, s): n for q, s, n in rows}

    async def dead_letter_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        by_queue = dict(
            self._db.execute(
                "SELECT queue, COUNT(*) FROM jobs WHERE dead_letter = 1 GROUP BY queue"
            ).fetchall()
        )
        # By the code of the last error: a walk of admin_dead_error, no document read.
        by_error = {
            code or "unknown": n
            for code, n in self._db.execute(
                f"SELECT {ERROR_CODE}, COUNT(*) FROM jobs WHERE dead_letter = 1 GROUP BY 1"
            )
        }
        return by_queue, by_error

    async def oldest_available_ms(self, queue: str) -> int | None:
        row = self._db.execute(
            f"SELECT MIN({CREATED}) FROM jobs WHERE queue = ? AND state = 'available'", (queue,)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def queue_config(self, queue: str | None = None) -> dict[str, dict[str, Any]]:
        if queue is None:
            rows = self._db.execute("SELECT queue, doc FROM admin_queue_config").fetchall()
        else:
            rows = self._db.execute(
                "SELECT queue, doc FROM admin_queue_config WHERE queue = ?", (queue,)
            ).fetchall()
        return {q: orjson.loads(doc) for q, doc in rows}

    async def put_queue_config(self, queue: str, config: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO admin_queue_config (queue, doc) VALUES (?, ?)",
            (queue, orjson.dumps(config)),
        )
        # Inside the store's open group-commit transaction the write is committed at the
        # start of the next loop turn (already scheduled); outside one it was autocommitted.
        if self._db.in_transaction:
            await asyncio.sleep(0)

    async def reset(self) -> None:
        self._db.execute("DELETE FROM admin_queue_config")
        if self._db.in_transaction:
            await asyncio.sleep(0)

    async def explain(self, query: JobQuery) -> list[str]:
        where, args = _where(query)
        sql = f"SELECT doc FROM jobs{where}{_order(query, True)} LIMIT 20"
        return [row[3] for row in self._db.execute("EXPLAIN QUERY PLAN " + sql, args)]


def admin_queries_for(store: object) -> AdminQueries | None:
    """The admin queries of `store` (SQLite: over its connection; others: their
    `admin_queries()`), or None for a store that does not provide them."""
    from ojs_amqp.store.sqlite import SqliteJobStore

    if isinstance(store, SqliteJobStore):
        return SqliteAdminQueries(store.db)
    provider = getattr(store, "admin_queries", None)
    return provider() if callable(provider) else None
