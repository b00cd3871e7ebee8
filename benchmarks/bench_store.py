#!/usr/bin/env python
"""The job store on the daemon's write pattern: SQLite, PostgreSQL through asyncpg, and
PostgreSQL through psycopg 3, in the same run, on the same machine.

Per job, what the engine does to its store for a push, a fetch and an ack, in that order:

  insert(published=False)      the push's outbox row
  mark_published([id])         after the broker's confirm
  get(id)                      the delivery's copy check
  update(active, copy, state)  the lease (compare-and-set on copy 1, state available)
  update(completed, ...)       the ack (compare-and-set on copy 1, state active)

C jobs go through that sequence at once (C tasks, one job each at a time), N jobs in all, so
the stores see what a busy daemon gives them: many moves per loop turn. Variants:

  sqlite            ojs_amqp.store.sqlite (group commit on one connection, WAL)
  asyncpg           ojs_amqp.store.postgres as shipped: a loop turn's row writes in one
                    ojs_apply call, a turn's lookups in one = ANY query
  psycopg           the same store, SQL and batching, with psycopg 3 (AsyncConnection,
                    autocommit) lending the connections instead of asyncpg
  asyncpg+reset     the shipped store with asyncpg's default pool reset put back (a reset
                    query each time a batch gives its connection back), to show what
                    skipping it saves
  asyncpg/1-by-1    one statement per operation through a pool (what batching saves)
  psycopg/1-by-1    the same with psycopg 3

Printed per variant: wall time per operation, this process's CPU per job (the driver's cost
in the daemon), the PostgreSQL backends' CPU per job (from /proc: run it on the database's
machine), and ratios against asyncpg (batched) and SQLite. Variants run in rotation, R
rounds, and the median round is shown. PostgreSQL work happens in a schema of its own,
dropped at the end.

    python benchmarks/bench_store.py [--jobs N] [--concurrency C] [--rounds R]
                                     [--postgres URL] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson
import psycopg

from ojs_amqp.core.job import Job, JobState, to_record
from ojs_amqp.store.base import JobStore
from ojs_amqp.store.postgres import PostgresJobStore
from ojs_amqp.store.rows import finished_at, is_dead_letter
from ojs_amqp.store.sqlite import SqliteJobStore

OPS_PER_JOB = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_URL = os.environ.get("OJS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


# --- the workload --------------------------------------------------------------------------


def _job(n: int) -> Job:
    return Job(id=f"019a0000-0000-7000-8000-{n:012d}", type="email.send", queue="bench",
               args=[{"to": f"user{n}@example.com", "template": "welcome"}],
               state=JobState.AVAILABLE, created_at_ms=1_700_000_000_000 + n,
               meta={"tenant": "acme"})  # fmt: skip


async def _lifecycle(store: JobStore, job: Job) -> None:
    await store.insert(job, published=False)
    await store.mark_published([job.id])
    stored = await store.get(job.id)
    assert stored is not None
    leased = replace(stored, state=JobState.ACTIVE, attempt=1, started_at_ms=stored.created_at_ms)
    assert await store.update(leased, expect_copy=1, expect_state=JobState.AVAILABLE)
    done = replace(leased, state=JobState.COMPLETED, completed_at_ms=leased.created_at_ms + 5)
    assert await store.update(done, expect_copy=1, expect_state=JobState.ACTIVE)


async def _drive(store: JobStore, first: int, jobs: int, concurrency: int) -> None:
    numbers = iter(range(first, first + jobs))

    async def worker() -> None:
        for n in numbers:
            await _lifecycle(store, _job(n))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# --- psycopg 3 behind the shipped store's batching -----------------------------------------

_PLACEHOLDER = re.compile(r"\$\d+")


def _psycopg_sql(sql: str) -> str:
    """asyncpg's $n to psycopg's %s (every statement here uses each $n once, in order)."""
    return _PLACEHOLDER.sub("%s", sql)


async def _psycopg_connect(url: str) -> psycopg.AsyncConnection[Any]:
    """libpq takes no search_path parameter: it goes in `options` instead."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("search_path", None)
    dsn = urlunsplit(parts._replace(query=urlencode(query)))
    extra = {"options": f"-c search_path={schema}"} if schema else {}
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, **extra)


class _PsycopgConnection:
    """The four asyncpg calls the store makes, answered by a psycopg AsyncConnection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        cur = await self.conn.execute(_psycopg_sql(sql), args, prepare=True)
        return await cur.fetchall()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0][0]

    async def execute(self, sql: str, *args: Any) -> str:
        cur = await self.conn.execute(_psycopg_sql(sql), args, prepare=True)
        return f"DONE {cur.rowcount}"

    def transaction(self) -> Any:
        return self.conn.transaction()


class _Connections:
    """A fixed set of connections lent one at a time (the same for both drivers)."""

    def __init__(self, conns: list[Any]) -> None:
        self.all = conns
        self._free: asyncio.Queue[Any] = asyncio.Queue()
        for conn in conns:
            self._free.put_nowait(conn)

    @contextlib.asynccontextmanager
    async def lend(self) -> AsyncIterator[Any]:
        conn = await self._free.get()
        try:
            yield conn
        finally:
            self._free.put_nowait(conn)


async def _migrate(url: str) -> None:
    """The schema, through the shipped store (which then lets go of its one-daemon lock)."""
    store = PostgresJobStore(url)
    await store.open()
    await store.close()


class PsycopgStore(PostgresJobStore):
    """The shipped PostgreSQL store with psycopg 3 connections under its batching."""

    pool: _Connections

    async def open(self) -> None:
        await _migrate(self.options.dsn)
        conns = [await _psycopg_connect(self.options.dsn) for _ in range(self.options.pool_size)]
        self.pool = _Connections([_PsycopgConnection(c) for c in conns])

    def _connection(self) -> Any:
        return self.pool.lend()

    async def close(self) -> None:
        for conn in self.pool.all:
            await conn.conn.close()


class DefaultResetStore(PostgresJobStore):
    """The shipped store with asyncpg's own pool reset on release (its default)."""

    async def open(self) -> None:
        from ojs_amqp.store.postgres import store as module

        saved = module._keep_session
        module._keep_session = None  # type: ignore[assignment]  # create_pool(reset=None)
        try:
            await super().open()
        finally:
            module._keep_session = saved


# --- one statement per operation (both drivers) ----------------------------------------------

_INSERT = "INSERT INTO ojs_jobs VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
_PUBLISH = "UPDATE ojs_jobs SET published = true WHERE id = $1"
_GET = "SELECT doc FROM ojs_jobs WHERE id = $1"
_CAS = (
    "UPDATE ojs_jobs SET queue = $1, state = $2, copy = $3, published = $4, dead_letter = $5, "
    "expires_at_ms = $6, finished_at_ms = $7, doc = $8 WHERE id = $9 AND copy = $10 AND "
    "state = $11"
)


class OneByOneStore:
    """The write pattern's five methods as single statements on pooled connections."""

    kind = "postgresql"

    def __init__(self, url: str, driver: str, pool_size: int) -> None:
        self.url, self.driver, self.pool_size = url, driver, pool_size

    async def open(self) -> None:
        await _migrate(self.url)
        if self.driver == "asyncpg":
            conns: list[Any] = [await asyncpg.connect(self.url) for _ in range(self.pool_size)]
        else:
            conns = [
                _PsycopgConnection(await _psycopg_connect(self.url)) for _ in range(self.pool_size)
            ]
        self.pool = _Connections(conns)

    async def close(self) -> None:
        for conn in self.pool.all:
            await (conn.close() if self.driver == "asyncpg" else conn.conn.close())

    async def _execute(self, sql: str, *args: Any) -> str:
        async with self.pool.lend() as conn:
            return str(await conn.execute(sql, *args))

    @staticmethod
    def _columns(job: Job, published: bool) -> tuple[Any, ...]:
        return (job.queue, job.state.value, job.copy, published, is_dead_letter(job),
                job.expires_at_ms, finished_at(job), orjson.dumps(to_record(job)))  # fmt: skip

    async def insert(self, job: Job, *, published: bool) -> None:
        await self._execute(_INSERT, job.id, *self._columns(job, published))

    async def mark_published(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            await self._execute(_PUBLISH, job_id)

    async def get(self, job_id: str) -> Job | None:
        from ojs_amqp.core.job import from_record

        async with self.pool.lend() as conn:
            rows = await conn.fetch(_GET, job_id)
        return from_record(orjson.loads(rows[0][0])) if rows else None

    async def update(
        self,
        job: Job,
        *,
        expect_copy: int | None = None,
        expect_state: JobState | None = None,
        published: bool = True,
    ) -> bool:
        assert expect_copy is not None and expect_state is not None
        status = await self._execute(_CAS, *self._columns(job, published), job.id, expect_copy,
                                     expect_state.value)  # fmt: skip
        return status.endswith(" 1")


# --- measuring -------------------------------------------------------------------------------


def _backend_cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def _backends(admin_url: str, app: str) -> list[int]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchall()
    return [int(pid) for (pid,) in rows]


@dataclass
class Round:
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None
    jobs: int

    def per_op_us(self) -> float:
        return self.wall_s / (self.jobs * OPS_PER_JOB) * 1e6

    def client_us_per_job(self) -> float:
        return self.client_cpu_s / self.jobs * 1e6

    def server_us_per_job(self) -> float | None:
        return None if self.server_cpu_s is None else self.server_cpu_s / self.jobs * 1e6


@dataclass
class Variant:
    name: str
    make: Callable[[int], Awaitable[tuple[JobStore, str | None]]]  # round -> (store, app name)


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode([*parse_qsl(parts.query), *params.items()])))


async def _one_round(variant: Variant, rnd: int, args: argparse.Namespace, admin: str) -> Round:
    store, app = await variant.make(rnd)
    await store.open()
    try:
        base = (rnd + 1) * 10_000_000
        await _drive(store, base, min(500, args.jobs), args.concurrency)  # warm-up, connections
        pids = _backends(admin, app) if app else []
        server_before = _backend_cpu_s(pids)
        cpu_before, started = time.process_time(), time.perf_counter()
        await _drive(store, base + 1_000_000, args.jobs, args.concurrency)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        server = _backend_cpu_s(pids) - server_before if app else None
    finally:
        await store.close()
    return Round(wall, cpu, server, args.jobs)


def _machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(len(os.sched_getaffinity(0))), "cpu": model,
        "kernel": platform.release(), "python": platform.python_version(),
        "asyncpg": metadata.version("asyncpg"), "psycopg": metadata.version("psycopg"),
        "sqlite": __import__("sqlite3").sqlite_version,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }  # fmt: skip


async def main(args: argparse.Namespace) -> int:
    schema = f"bench_store_{secrets.token_hex(4)}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        server = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        conn.execute(f"CREATE SCHEMA {schema}")
    tmp = tempfile.TemporaryDirectory(prefix="bench-store-")

    def pg_url(app: str) -> str:
        return _with_query(args.postgres, search_path=schema, application_name=app)

    async def sqlite(rnd: int) -> tuple[JobStore, str | None]:
        return SqliteJobStore(str(Path(tmp.name) / f"round{rnd}.db")), None

    def postgres(kind: str) -> Callable[[int], Awaitable[tuple[JobStore, str | None]]]:
        async def make(rnd: int) -> tuple[JobStore, str | None]:
            app = f"{schema}_{re.sub(r'[^a-z0-9]', '_', kind)}_{rnd}"
            url = pg_url(app)
            if kind == "asyncpg":
                return PostgresJobStore(url), app
            if kind == "psycopg":
                return PsycopgStore(url), app
            if kind == "asyncpg+reset":
                return DefaultResetStore(url), app
            driver = kind.split("/")[0]
            return OneByOneStore(url, driver, 4), app  # type: ignore[return-value]

        return make

    variants = [Variant("sqlite", sqlite)] + [
        Variant(kind, postgres(kind))
        for kind in ("asyncpg", "asyncpg+reset", "psycopg", "asyncpg/1-by-1", "psycopg/1-by-1")
    ]
    rounds: dict[str, list[Round]] = {v.name: [] for v in variants}
    try:
        for rnd in range(args.rounds):
            for variant in variants:
                async with _clean_jobs(args.postgres, schema):
                    rounds[variant.name].append(await _one_round(variant, rnd, args, args.postgres))
                last = rounds[variant.name][-1]
                print(f"round {rnd + 1} {variant.name:>15}: {last.per_op_us():7.1f} µs/op",
                      file=sys.stderr)  # fmt: skip
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        tmp.cleanup()

    median = {name: sorted(rs, key=lambda r: r.wall_s)[len(rs) // 2] for name, rs in rounds.items()}
    _print(median, rounds, args, server)
    if args.json:
        every = {name: [r.__dict__ for r in rs] for name, rs in rounds.items()}
        report = {"machine": _machine(), "postgresql": server, "jobs": args.jobs,
                  "concurrency": args.concurrency, "rounds": every}  # fmt: skip
        _write(args.json, orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0


def _write(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


@contextlib.asynccontextmanager
async def _clean_jobs(admin_url: str, schema: str) -> AsyncIterator[None]:
    """Each round starts with empty tables (SQLite rounds each have a file of their own)."""
    try:
        yield
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass(%s)", (f"{schema}.ojs_jobs",)).fetchone()
            if exists and exists[0]:
                conn.execute(f"TRUNCATE {schema}.ojs_jobs")


def _print(median: dict[str, Round], rounds: dict[str, list[Round]], args: argparse.Namespace,
           server: str) -> None:  # fmt: skip
    machine = _machine()
    print(f"\nbench_store: {args.jobs} jobs x {OPS_PER_JOB} store operations, "
          f"{args.concurrency} in flight, median of {args.rounds} rounds")  # fmt: skip
    described = ", ".join(f"{k} {v}" for k, v in machine.items())
    print(f"machine: {described}, PostgreSQL {server}")
    base, lite = median["asyncpg"], median["sqlite"]
    print(f"\n{'variant':>15} | {'µs/op':>7} | {'client CPU µs/job':>17} | "
          f"{'server CPU µs/job':>17} | {'wall / asyncpg':>14} | {'wall / sqlite':>13} | "
          f"{'client CPU / asyncpg':>20} | spread µs/op")  # fmt: skip
    for name, r in median.items():
        server_us = r.server_us_per_job()
        server_text = "-" if server_us is None else f"{server_us:.0f}"
        ops = sorted(x.per_op_us() for x in rounds[name])
        cpu_ratio = r.client_cpu_s / base.client_cpu_s
        print(f"{name:>15} | {r.per_op_us():7.1f} | {r.client_us_per_job():17.0f} | "
              f"{server_text:>17} | {r.wall_s / base.wall_s:14.2f} | "
              f"{r.wall_s / lite.wall_s:13.2f} | {cpu_ratio:20.2f} | "
              f"{ops[0]:.1f}-{ops[-1]:.1f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--postgres",
        default=DEFAULT_URL,
        help="a database to work in (a schema of its own is created and dropped); "
        "env OJS_POSTGRES_URL",
    )
    parser.add_argument("--json", help="write every round's figures here")
    sys.exit(asyncio.run(main(parser.parse_args())))
