"""What only the PostgreSQL store has: batched round trips, versioned migrations, and bounded
waits when the database is gone or silent (through the fault suite's TCP proxy)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import urlsplit

import pytest

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.store.base import StoreUnavailable
from ojs_amqp.store.postgres import SCHEMA_VERSION, PostgresJobStore
from ojs_amqp.store.postgres.guard import StoreInUse
from tests.daemon import free_port
from tests.faults.proxy import SilentListener, TcpProxy
from tests.postgres import admin_connect, private_schema, require_postgres, schema_of, with_query


def _job(n: int = 1, **changes: object) -> Job:
    job = Job(id=f"019a0000-0000-7000-8000-{n:012d}", type="t.x", queue="q", args=[n],
              state=JobState.AVAILABLE, created_at_ms=1_000 + n)  # fmt: skip
    return replace(job, **changes)  # type: ignore[arg-type]


def _on_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{port}").geturl()


@pytest.fixture
def proxy(postgres_store_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(postgres_store_url)
    p = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    try:
        yield p
    finally:
        p.close()


async def test_a_loop_turns_moves_go_to_the_server_as_one_batch(pg: PostgresJobStore) -> None:
    await asyncio.gather(*(pg.insert(_job(n), published=False) for n in range(100)))
    before = pg.group_commits
    moves = [pg.update(_job(n, state=JobState.ACTIVE), expect_copy=1) for n in range(100)]
    marks = pg.mark_published([_job(n).id for n in range(100)])
    stale = pg.update(_job(0, state=JobState.CANCELLED), expect_copy=9)
    outcomes = await asyncio.gather(*moves, marks, stale)
    assert pg.group_commits == before + 1
    assert all(outcomes[:100]) and outcomes[-1] is False
    assert await pg.count_by_state() == {("q", "active"): 100}
    assert await pg.outbox_size() == 0


async def test_writes_made_while_a_batch_is_on_the_wire_form_the_next(pg: PostgresJobStore) -> None:
    before = pg.group_commits
    first = asyncio.ensure_future(pg.insert(_job(1), published=True))
    await asyncio.sleep(0)  # the first batch has left
    rest = [pg.insert(_job(n), published=True) for n in range(2, 50)]
    await asyncio.gather(first, *rest)
    assert pg.group_commits == before + 2


async def test_mixed_statements_and_row_writes_commit_in_call_order(pg: PostgresJobStore) -> None:
    await pg.insert(_job(1, state=JobState.COMPLETED, completed_at_ms=5), published=True)
    before = pg.group_commits
    outcomes = await asyncio.gather(
        pg.insert(_job(2, state=JobState.COMPLETED, completed_at_ms=5), published=True),
        pg.prune_finished(100, 100),  # sees job 2: it was written first
        pg.insert(_job(3, state=JobState.COMPLETED, completed_at_ms=5), published=True),
    )
    assert outcomes[1] == 2 and pg.group_commits == before + 1
    assert await pg.get(_job(3).id) is not None


async def test_migrations_run_once_and_record_their_versions(postgres_store_url: str) -> None:
    for _ in range(2):
        store = PostgresJobStore(postgres_store_url)
        await store.open()
        await store.close()
    schema = schema_of(postgres_store_url)
    with admin_connect() as conn:
        rows = conn.execute(f"SELECT version FROM {schema}.ojs_schema_version").fetchall()
    assert [v for (v,) in rows] == list(range(1, SCHEMA_VERSION + 1))


async def test_a_second_daemon_on_one_store_is_refused_while_the_first_has_it_open(
    postgres_store_url: str,
) -> None:
    first = PostgresJobStore(postgres_store_url)
    await first.open()
    try:
        with pytest.raises(
            StoreInUse, match=r"another ojs-amqp daemon .*backend pid \d+.*application 'ojs-amqp'"
        ):
            await PostgresJobStore(postgres_store_url).open()
        await first.insert(_job(), published=True)  # the first one is unharmed
        assert await first.get(_job().id) == _job()
    finally:
        await first.close()
    second = PostgresJobStore(postgres_store_url)  # closed: free again
    await second.open()
    assert await second.get(_job().id) == _job()
    await second.close()


async def test_the_lock_session_asks_the_server_to_notice_a_vanished_daemon(
    pg: PostgresJobStore,
) -> None:
    """A daemon whose machine is gone must not hold the store for TCP's default two hours."""
    lock = pg._lock
    assert lock is not None
    for name, value in [("tcp_keepalives_idle", "10"), ("tcp_keepalives_interval", "5"),
                        ("tcp_keepalives_count", "3")]:  # fmt: skip
        assert await lock.fetchval(f"SHOW {name}") == value


async def test_daemons_starting_at_once_on_a_fresh_database_migrate_it_once(
    postgres_store_url: str,
) -> None:
    """Two stores in two schemas of one database: the migration lock is database-wide."""
    with private_schema(require_postgres()) as other_url:
        stores = [PostgresJobStore(url) for url in (postgres_store_url, other_url)]
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].insert(_job(), published=True)
        assert await stores[1].get(_job().id) is None  # each schema has its own tables
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_database_from_a_newer_daemon_is_refused(postgres_store_url: str) -> None:
    store = PostgresJobStore(postgres_store_url)
    await store.open()
    await store.close()
    with admin_connect() as conn:
        conn.execute(
            f"INSERT INTO {schema_of(postgres_store_url)}.ojs_schema_version (version) "
            f"VALUES ({SCHEMA_VERSION + 1})"
        )
    with pytest.raises(RuntimeError, match="newer"):
        await PostgresJobStore(postgres_store_url).open()


async def test_no_server_is_a_clear_error_at_open(postgres_store_url: str) -> None:
    url = with_query(_on_port(postgres_store_url, free_port()), connect_timeout="2")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await PostgresJobStore(url).open()
    assert time.monotonic() - started < 5


async def test_a_silent_server_is_given_up_on_after_the_connect_timeout(
    postgres_store_url: str,
) -> None:
    silent = SilentListener()
    try:
        url = with_query(_on_port(postgres_store_url, silent.port), connect_timeout="1")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await PostgresJobStore(url).open()
        assert 0.9 < time.monotonic() - started < 4
    finally:
        silent.close()


async def test_a_frozen_database_fails_reads_and_writes_in_bounded_time_then_recovers(
    postgres_store_url: str, proxy: TcpProxy
) -> None:
    url = with_query(
        _on_port(postgres_store_url, proxy.port), connect_timeout="1", command_timeout="1"
    )
    store = PostgresJobStore(url)
    await store.open()
    try:
        await store.insert(_job(1), published=True)
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get(_job(1).id)
        with pytest.raises(StoreUnavailable):
            await store.insert(_job(2), published=True)
        with pytest.raises(StoreUnavailable):
            await store.outbox_size()  # what /ojs/v1/health asks
        assert time.monotonic() - started < 8
        proxy.thaw()
        proxy.cut()  # the held connections go; new ones are refused
        with pytest.raises(StoreUnavailable):
            await store.outbox_size()
        proxy.restore()
        deadline = time.monotonic() + 10
        while True:  # the pool replaces its broken connections
            try:
                assert await store.get(_job(1).id) == _job(1)
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        await store.insert(_job(3), published=True)
    finally:
        await asyncio.wait_for(store.close(), 15)


def test_each_test_schema_is_dropped_with_its_tables_afterwards() -> None:
    def schemas(name: str) -> int:
        with admin_connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (name,)
            ).fetchone()
        return int(row[0]) if row else 0

    with private_schema(require_postgres()) as url:
        name = schema_of(url)
        asyncio.run(_open_and_close(url))
        assert schemas(name) == 1
    assert schemas(name) == 0


async def _open_and_close(url: str) -> None:
    store = PostgresJobStore(url)
    await store.open()
    await store.close()
