"""PostgreSQL job store: the JobStore contract on a shared server (asyncpg, a small pool).

Writes go through group commit (batch.py): a loop turn's moves reach the server as one call;
lookups by id are batched the same way (lookups.py); other reads use the pool directly.
Every wait is bounded: connecting by `connect_timeout`, each statement and each wait for a
pooled connection by `command_timeout` (options.py); a server that is gone or silent turns
into StoreUnavailable (HTTP 503, health `unhealthy`), never a hang. One daemon per store
(docs/scaling.md): a second one is refused at open (guard.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from ojs_amqp.core.job import Job, JobState, from_record, to_record
from ojs_amqp.errors import Duplicate
from ojs_amqp.store.base import QueueInfo, StoreUnavailable
from ojs_amqp.store.location import describe
from ojs_amqp.store.postgres.admin_queries import PostgresAdminQueries
from ojs_amqp.store.postgres.batch import DELETE, INSERT, PUBLISH, UPDATE, GroupCommit
from ojs_amqp.store.postgres.guard import hold
from ojs_amqp.store.postgres.lookups import BatchedLookups
from ojs_amqp.store.postgres.migrations import migrate
from ojs_amqp.store.postgres.options import PostgresOptions, parse
from ojs_amqp.store.rows import finished_at, is_dead_letter

_DOC = "SELECT doc FROM ojs_jobs WHERE "


def _job(doc: bytes) -> Job:
    return from_record(orjson.loads(doc))


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset on release: nothing. asyncpg's default sends a reset query (RESET ALL, …),
    one more round trip for every batch; our sessions change no state a reset would clear,
    and asyncpg still rolls back a transaction left open."""


def _unavailable(exc: BaseException) -> BaseException:
    """Connection and time-out failures become one OJS error; anything else (a bug, a
    constraint) passes through unchanged."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError,
                        asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                        asyncpg.QueryCanceledError)):  # fmt: skip
        return StoreUnavailable(f"the PostgreSQL store is unreachable: {type(exc).__name__}: {exc}")
    return exc


class PostgresJobStore:
    kind = "postgresql"

    def __init__(self, url: str) -> None:
        self.options: PostgresOptions = parse(url)
        self._pool: asyncpg.Pool | None = None
        self._lock: asyncpg.Connection | None = None  # holds the one-daemon guard (guard.py)
        self._writes = GroupCommit(self._connection, _unavailable)
        self._lookups = BatchedLookups(self._connection, _unavailable)

    def admin_queries(self) -> PostgresAdminQueries:
        """The admin API's indexed reads (store/admin_queries.py), over this store's pool."""
        return PostgresAdminQueries(self._fetch, self._writes.statement)

    @property
    def group_commits(self) -> int:
        """Batches sent so far (one round trip each when they hold only row writes)."""
        return self._writes.batches

    async def open(self) -> None:
        # min_size=0: asyncpg would otherwise keep reconnecting in the background while the
        # server is gone (logging a traceback each time); connections open when needed.
        o = self.options
        pool: asyncpg.Pool | None = None
        try:
            self._lock = await hold(o)
            pool = await asyncpg.create_pool(
                o.dsn, min_size=0, max_size=o.pool_size, timeout=o.connect_timeout_s,
                command_timeout=o.command_timeout_s, statement_cache_size=o.statement_cache_size,
                server_settings=o.server_settings, reset=_keep_session,
            )  # fmt: skip
            async with pool.acquire(timeout=o.connect_timeout_s + o.command_timeout_s) as conn:
                await migrate(conn)
        except BaseException as exc:
            if pool is not None:
                pool.terminate()
            if self._lock is not None:
                self._lock.terminate()
                self._lock = None
            failure = _unavailable(exc)
            if isinstance(failure, StoreUnavailable):
                failure = type(failure)(f"{failure.message} (--store {describe(o.dsn)})")
            if failure is exc:
                raise
            raise failure from exc
        self._pool = pool

    async def close(self) -> None:
        await self._writes.drain()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self.options.command_timeout_s)
            except TimeoutError:
                pool.terminate()
        if self._lock is not None:
            lock, self._lock = self._lock, None
            try:
                await lock.close(timeout=self.options.command_timeout_s)
            except (OSError, TimeoutError, asyncpg.InterfaceError):
                lock.terminate()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        async with self._pool.acquire(timeout=self.options.command_timeout_s) as conn:
            yield conn

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            async with self._connection() as conn:
                return list(await conn.fetch(sql, *args))
        except Exception as exc:
            failure = _unavailable(exc)
            if failure is exc:
                raise
            raise failure from exc

    async def _docs(self, sql: str, *args: Any) -> list[Job]:
        return [_job(row[0]) for row in await self._fetch(sql, *args)]

    async def _value(self, sql: str, *args: Any) -> int:
        return int((await self._fetch(sql, *args))[0][0])

    # --- jobs: row writes, batched --------------------------------------------------------

    @staticmethod
    def _row(
        kind: int, job: Job, published: bool, copy: int | None, state: str | None
    ) -> tuple[Any, ...]:
        return (kind, job.id, job.queue, job.state.value, job.copy, published,
                is_dead_letter(job), job.expires_at_ms, finished_at(job),
                orjson.dumps(to_record(job)), copy, state)  # fmt: skip

    async def insert(self, job: Job, *, published: bool) -> None:
        if not await self._writes.row(self._row(INSERT, job, published, None, None)):
            raise Duplicate(
                f"a job with id {job.id} already exists", details={"existing_job_id": job.id}
            )

    async def update(
        self,
        job: Job,
        *,
        expect_copy: int | None = None,
        expect_state: JobState | None = None,
        published: bool = True,
    ) -> bool:
        state = expect_state.value if expect_state is not None else None
        return await self._writes.row(self._row(UPDATE, job, published, expect_copy, state))

    async def mark_published(self, job_ids: list[str]) -> None:
        marks = [self._writes.row((PUBLISH, i, *([None] * 10))) for i in job_ids]
        for mark in marks:
            await mark

    async def delete(self, job_id: str) -> bool:
        return await self._writes.row((DELETE, job_id, *([None] * 10)))

    # --- jobs: reads ---------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        doc = await self._lookups.doc(job_id)
        return _job(doc) if doc is not None else None

    async def unpublished(self, limit: int) -> list[Job]:
        return await self._docs(_DOC + "NOT published LIMIT $1", limit)

    async def outbox_size(self) -> int:
        return await self._value("SELECT count(*) FROM ojs_jobs WHERE NOT published")

    async def dead_letters(
        self, queue: str | None, limit: int, offset: int
    ) -> tuple[list[Job], int]:
        where = "dead_letter AND ($1::text IS NULL OR queue = $1)"
        total = await self._value(f"SELECT count(*) FROM ojs_jobs WHERE {where}", queue)
        jobs = await self._docs(
            f"{_DOC}{where} ORDER BY finished_at_ms DESC, id DESC LIMIT $2 OFFSET $3",
            queue, limit, offset,
        )  # fmt: skip
        return jobs, total

    async def expiring(self, now_ms: int, limit: int) -> list[Job]:
        return await self._docs(
            _DOC + "expires_at_ms IS NOT NULL AND finished_at_ms IS NULL AND "
            "expires_at_ms <= $1 AND state != 'active' LIMIT $2",
            now_ms, limit,
        )  # fmt: skip

    async def open_jobs(self, queue: str) -> int:
        return await self._value(
            "SELECT count(*) FROM ojs_jobs WHERE queue = $1 AND finished_at_ms IS NULL", queue
        )

    async def unfinished(self, queue: str) -> list[Job]:
        return await self._docs(_DOC + "queue = $1 AND finished_at_ms IS NULL", queue)

    async def available(self, queue: str) -> list[Job]:
        return await self._docs(
            _DOC + "queue = $1 AND finished_at_ms IS NULL AND state = $2",
            queue, JobState.AVAILABLE.value,
        )  # fmt: skip

    async def count_by_state(self) -> dict[tuple[str, str], int]:
        rows = await self._fetch("SELECT queue, state, count(*) FROM ojs_jobs GROUP BY 1, 2")
        return {(q, s): int(n) for q, s, n in rows}

    # --- retention and queues: statements, batched with the row writes ---------------------

    async def prune_finished(self, completed_before_ms: int, discarded_before_ms: int) -> int:
        return await self._writes.statement(
            "DELETE FROM ojs_jobs WHERE finished_at_ms IS NOT NULL AND NOT dead_letter AND "
            "((state != 'discarded' AND finished_at_ms < $1) OR "
            "(state = 'discarded' AND finished_at_ms < $2))",
            completed_before_ms, discarded_before_ms,
        )  # fmt: skip

    async def prune_dead_letters(self, before_ms: int, keep_per_queue: int) -> int:
        # Dead letters past their age are older than every one kept, so ranking all of them
        # keeps the same newest `keep_per_queue` as deleting the old ones first would.
        return await self._writes.statement(
            "DELETE FROM ojs_jobs WHERE dead_letter AND (finished_at_ms < $1 OR id IN ("
            "SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY queue "
            "ORDER BY finished_at_ms DESC, id DESC) AS newest FROM ojs_jobs WHERE dead_letter"
            ") ranked WHERE newest > $2))",
            before_ms, keep_per_queue,
        )  # fmt: skip

    async def delete_queue(self, queue: str) -> int:
        return await self._writes.statement(
            "WITH gone AS (DELETE FROM ojs_queues WHERE name = $1) "
            "DELETE FROM ojs_jobs WHERE queue = $1 AND finished_at_ms IS NOT NULL",
            queue,
        )

    async def add_queue(self, name: str, now_ms: int) -> None:
        await self._writes.statement(
            "INSERT INTO ojs_queues (name, created_at_ms) VALUES ($1, $2) "
            "ON CONFLICT (name) DO NOTHING",
            name, now_ms,
        )  # fmt: skip

    async def queues(self) -> list[QueueInfo]:
        rows = await self._fetch("SELECT name, created_at_ms FROM ojs_queues ORDER BY name")
        return [QueueInfo(name, int(created)) for name, created in rows]

    # --- crons ------------------------------------------------------------------------------

    async def put_cron(
        self, cron: dict[str, Any], *, expect_next_run_ms: int | None = None
    ) -> bool:
        """Insert or replace a cron; with `expect_next_run_ms`, only if the stored next run is
        still that (compare-and-set, so one tick fires once)."""
        doc, name, next_run = orjson.dumps(cron), cron["name"], cron["next_run_at_ms"]
        if expect_next_run_ms is None:
            sql = (
                "INSERT INTO ojs_crons (name, next_run_at_ms, doc) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET next_run_at_ms = $2, doc = $3"
            )
            return await self._writes.statement(sql, name, next_run, doc) == 1
        sql = (
            "UPDATE ojs_crons SET next_run_at_ms = $2, doc = $3 WHERE name = $1 "
            "AND next_run_at_ms = $4"
        )
        return await self._writes.statement(sql, name, next_run, doc, expect_next_run_ms) == 1

    async def get_cron(self, name: str) -> dict[str, Any] | None:
        rows = await self._fetch("SELECT doc FROM ojs_crons WHERE name = $1", name)
        return orjson.loads(rows[0][0]) if rows else None

    async def crons(self) -> list[dict[str, Any]]:
        rows = await self._fetch("SELECT doc FROM ojs_crons ORDER BY name")
        return [orjson.loads(row[0]) for row in rows]

    async def due_crons(self, now_ms: int) -> list[dict[str, Any]]:
        rows = await self._fetch(
            "SELECT doc FROM ojs_crons WHERE next_run_at_ms <= $1 ORDER BY next_run_at_ms", now_ms
        )
        return [orjson.loads(row[0]) for row in rows]

    async def delete_cron(self, name: str) -> bool:
        return await self._writes.statement("DELETE FROM ojs_crons WHERE name = $1", name) == 1

    async def reset(self) -> None:
        await self._writes.statement(
            "WITH crons AS (DELETE FROM ojs_crons), queues AS (DELETE FROM ojs_queues) "
            "DELETE FROM ojs_jobs"
        )
