"""The admin API's reads (store/admin_queries.py's `AdminQueries`) on the PostgreSQL store.

The filters and sorts read plain columns that migration 0002 adds and fills from the job
document, each served by an index of that migration (or version 1's dead-letter index), so
no list parses documents or scans the table; only the page read decodes its rows. Every call
goes through the store's pool with its bounded waits (a silent server: StoreUnavailable,
HTTP 503); the one write, queue configuration, joins the store's group commit, so it is
ordered with the job writes of the same loop turn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from ojs_amqp.core.job import Job, from_record
from ojs_amqp.store.admin_queries import JobQuery

Fetch = Callable[..., Awaitable[list[asyncpg.Record]]]
Statement = Callable[..., Awaitable[int]]


class _Where:
    """A WHERE clause and its numbered arguments ($1, $2, …)."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, clause: str) -> None:
        self.clauses.append(clause)

    @property
    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.clauses) if self.clauses else ""


def _where(query: JobQuery) -> _Where:
    w = _Where()
    if query.dead_letter:
        w.add("dead_letter")
    if query.queue is not None:
        w.add(f"queue = {w.arg(query.queue)}")
    if len(query.states) == 1:  # `=`, not `= ANY`: an index range in the page's order
        w.add(f"state = {w.arg(query.states[0])}")
    elif query.states:
        w.add(f"state = ANY({w.arg(list(query.states))}::text[])")
    if query.type is not None:
        w.add(f"job_type = {w.arg(query.type)}")
    if query.type_prefix is not None:
        # job_type sorts bytewise (COLLATE "C"): every type with the prefix is in this range
        low, high = w.arg(query.type_prefix), w.arg(query.type_prefix + "\U0010ffff")
        w.add(f"job_type >= {low} AND job_type < {high}")
    time = "finished_at_ms" if query.dead_letter else "created_at_ms"
    if query.since_ms is not None:
        w.add(f"{time} >= {w.arg(query.since_ms)}")
    if query.until_ms is not None:
        w.add(f"{time} < {w.arg(query.until_ms)}")
    if query.finished_before_ms is not None:
        w.add(f"finished_at_ms < {w.arg(query.finished_before_ms)}")
    if query.ids:
        w.add(f"id = ANY({w.arg(list(query.ids))}::text[])")
    return w


def _order(query: JobQuery, newest_first: bool) -> str:
    time = (
        "finished_at_ms"
        if query.dead_letter
        else "scheduled_at_ms"
        if query.by_due_time
        else "created_at_ms"
    )
    direction = "DESC" if newest_first else "ASC"
    return f" ORDER BY {time} {direction}, id {direction}"


class PostgresAdminQueries:
    """Over a PostgresJobStore's `fetch` (pooled, bounded, errors translated) and its
    group-commit `statement`."""

    def __init__(self, fetch: Fetch, statement: Statement) -> None:
        self._fetch = fetch
        self._statement = statement

    async def jobs(
        self, query: JobQuery, limit: int, offset: int, newest_first: bool
    ) -> tuple[list[Job], int]:
        return await self.page(query, limit, offset, newest_first), await self.count(query)

    async def page(self, query: JobQuery, limit: int, offset: int, newest_first: bool) -> list[Job]:
        w = _where(query)
        sql = (
            f"SELECT doc FROM ojs_jobs{w.sql}{_order(query, newest_first)} "
            f"LIMIT {w.arg(limit)} OFFSET {w.arg(offset)}"
        )
        rows = await self._fetch(sql, *w.args)
        return [from_record(orjson.loads(row[0])) for row in rows]

    async def count(self, query: JobQuery, at_most: int | None = None) -> int:
        w = _where(query)
        if at_most is None:
            sql = f"SELECT count(*) FROM ojs_jobs{w.sql}"
        else:
            sql = f"SELECT count(*) FROM (SELECT 1 FROM ojs_jobs{w.sql} LIMIT {int(at_most)}) m"
        return int((await self._fetch(sql, *w.args))[0][0])

    async def job_ids(self, query: JobQuery, limit: int) -> list[str]:
        w = _where(query)
        sql = f"SELECT id FROM ojs_jobs{w.sql}{_order(query, False)} LIMIT {w.arg(limit)}"
        return [row[0] for row in await self._fetch(sql, *w.args)]

    async def counts(self, queue: str | None = None) -> dict[tuple[str, str], int]:
        if queue is None:
            rows = await self._fetch("SELECT queue, state, count(*) FROM ojs_jobs GROUP BY 1, 2")
        else:
            rows = await self._fetch(
                "SELECT queue, state, count(*) FROM ojs_jobs WHERE queue = $1 GROUP BY 1, 2",
                queue,
            )
        return {(q, s): int(n) for q, s, n in rows}

    async def dead_letter_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        by_queue = await self._fetch(
            "SELECT queue, count(*) FROM ojs_jobs WHERE dead_letter GROUP BY 1"
        )
        by_error = await self._fetch(
            "SELECT error_code, count(*) FROM ojs_jobs WHERE dead_letter GROUP BY 1"
        )
        errors: dict[str, int] = {}
        for code, n in by_error:  # a NULL code and a literal "unknown" are one bucket
            errors[code or "unknown"] = errors.get(code or "unknown", 0) + int(n)
        return {q: int(n) for q, n in by_queue}, errors

    async def oldest_available_ms(self, queue: str) -> int | None:
        rows = await self._fetch(
            "SELECT min(created_at_ms) FROM ojs_jobs WHERE queue = $1 AND state = 'available'",
            queue,
        )
        return None if rows[0][0] is None else int(rows[0][0])

    async def queue_config(self, queue: str | None = None) -> dict[str, dict[str, Any]]:
        if queue is None:
            rows = await self._fetch("SELECT queue, doc FROM ojs_admin_queue_config")
        else:
            rows = await self._fetch(
                "SELECT queue, doc FROM ojs_admin_queue_config WHERE queue = $1", queue
            )
        return {q: orjson.loads(doc) for q, doc in rows}

    async def put_queue_config(self, queue: str, config: dict[str, Any]) -> None:
        await self._statement(
            "INSERT INTO ojs_admin_queue_config (queue, doc) VALUES ($1, $2) "
            "ON CONFLICT (queue) DO UPDATE SET doc = excluded.doc",
            queue, orjson.dumps(config),
        )  # fmt: skip

    async def reset(self) -> None:
        await self._statement("DELETE FROM ojs_admin_queue_config")

    async def search(
        self, field: str, text: str, queue: str | None, limit: int, window: int
    ) -> list[Job]:
        """Jobs among the newest `window` whose `field` (args or meta) contains `text`, in
        any case, newest first (the dashboard's search, dashboard/search.py)."""
        if field not in ("args", "meta"):
            raise ValueError(f"cannot search {field!r}")
        sql = (
            "SELECT doc FROM (SELECT queue, created_at_ms, id, doc FROM ojs_jobs "
            "ORDER BY created_at_ms DESC, id DESC LIMIT $1) newest "
            f"WHERE strpos(lower((ojs_doc_text(doc)::json -> '{field}')::text), "
            "lower($2)) > 0 AND ($3::text IS NULL OR queue = $3) "
            "ORDER BY created_at_ms DESC, id DESC LIMIT $4"
        )
        rows = await self._fetch(sql, window, text, queue, limit)
        return [from_record(orjson.loads(row[0])) for row in rows]

    async def explain(self, query: JobQuery) -> list[str]:
        w = _where(query)
        sql = f"SELECT doc FROM ojs_jobs{w.sql}{_order(query, True)} LIMIT 20"
        return [row[0] for row in await self._fetch("EXPLAIN " + sql, *w.args)]
