"""The admin API's queries on the PostgreSQL store (store/postgres/admin_queries.py): each
filter is an index scan on a table big enough for the planner to choose (EXPLAIN), the
columns migration 0002 fills stay true through moves, a version-1 store's rows are filled
when it migrates, and a NUL escape in a document neither fails a write nor a search."""

from __future__ import annotations

import re
from dataclasses import replace

import asyncpg

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.store.admin_queries import JobQuery
from ojs_amqp.store.postgres import PostgresJobStore
from ojs_amqp.store.postgres.migrations import migrations
from ojs_amqp.store.postgres.options import parse


def _job(n: int, **changes: object) -> Job:
    job = Job(id=f"019a0000-0000-7000-8000-{n:012d}", type=f"t{n % 10}.job", queue=f"q{n % 7}",
              args=[n], state=JobState.AVAILABLE, created_at_ms=1_000 + n)  # fmt: skip
    return replace(job, **changes)  # type: ignore[arg-type]


#: 20 000 rows over 7 queues, 5 states, 100 types, a tenth of them dead letters: enough that
#: a sequential scan costs more than any index range below (after ANALYZE). In random order
#: on disk, so that the plan follows the filter, not the order the rows happen to lie in.
_FILL = """
INSERT INTO ojs_jobs (id, queue, state, copy, published, dead_letter, finished_at_ms, doc)
SELECT 'fill-' || n, 'q' || (n % 7), (ARRAY['available','scheduled','active','completed',
       'discarded'])[1 + n % 5], 1, true, n % 10 = 4, CASE WHEN n % 5 >= 3 THEN n END,
       convert_to(json_build_object('type', CASE WHEN n % 1000 = 0 THEN
       'rare.job' ELSE 't' || (n % 100) || '.job' END, 'created_at_ms', n,
       'scheduled_at_ms', n + 5, 'error', json_build_object('code', 'e' || (n % 3)))::text,
       'UTF8')
  FROM generate_series(1, 20000) AS n ORDER BY random()
"""

CASES = {
    JobQuery(): "ojs_admin_created",
    JobQuery(queue="q1"): "ojs_admin_queue",
    JobQuery(queue="q1", states=("available",)): "ojs_admin_queue_state",
    JobQuery(states=("completed",), since_ms=1): "ojs_admin_state",
    JobQuery(states=("scheduled",), by_due_time=True): "ojs_admin_state_due",
    JobQuery(type="t3.job"): "ojs_admin_type",
    # A prefix is a range of types, not of creation times: the planner reads the type index
    # and sorts when the prefix is rare, and walks ojs_admin_created for a common one.
    JobQuery(type_prefix="rare."): "ojs_admin_type",
    JobQuery(dead_letter=True, queue="q1"): "ojs_admin_dead_queue",
    JobQuery(dead_letter=True, type="t4.job"): "ojs_admin_dead_type",
    JobQuery(dead_letter=True): "ojs_admin_dead_time",
}


async def test_each_filter_is_served_by_its_index(pg: PostgresJobStore) -> None:
    await pg._fetch(_FILL)
    await pg._fetch("ANALYZE ojs_jobs")
    queries = pg.admin_queries()
    for query, index in CASES.items():
        plan = "\n".join(await queries.explain(query))
        # "Index Scan using X" or "Bitmap Index Scan on X"
        assert re.search(rf"(Index Scan|Index Only Scan)( Backward)? using {index} ", plan) or (
            f"Bitmap Index Scan on {index} " in plan
        ), (query, plan)
        assert "Seq Scan" not in plan, (query, plan)
    common = "\n".join(await queries.explain(JobQuery(type_prefix="t3.")))
    assert "Seq Scan" not in common and "ojs_admin_created" in common, common
    # and they answer what the filter says
    assert await queries.job_ids(JobQuery(type_prefix="t3."), 3) == ["fill-3", "fill-103",
                                                                       "fill-203"]  # fmt: skip
    assert await queries.count(JobQuery(type_prefix="rare.")) == 20
    assert await queries.count(JobQuery(dead_letter=True, queue="q1")) == 285
    by_queue, by_error = await queries.dead_letter_counts()
    assert sum(by_queue.values()) == 2000 and set(by_error) == {"e0", "e1", "e2"}


async def test_the_filter_columns_follow_each_move_of_a_job(pg: PostgresJobStore) -> None:
    job = _job(1, scheduled_at_ms=9_000, state=JobState.SCHEDULED)
    await pg.insert(job, published=True)
    queries = pg.admin_queries()
    due = JobQuery(states=("scheduled",), by_due_time=True)
    assert [j.id for j in await queries.page(due, 10, 0, False)] == [job.id]
    failed = replace(job, state=JobState.DISCARDED, dead_letter=True, discarded_at_ms=5_000,
                     error={"code": "boom", "message": "no"})  # fmt: skip
    assert await pg.update(failed, expect_copy=1)
    await pg.mark_published([job.id])  # writes no document: the columns stay
    assert await queries.page(due, 10, 0, False) == []
    assert await queries.dead_letter_counts() == ({"q1": 1}, {"boom": 1})
    dead = await queries.page(JobQuery(dead_letter=True, type="t1.job"), 10, 0, True)
    assert [j.error for j in dead] == [{"code": "boom", "message": "no"}]


async def test_a_nul_escape_in_args_fails_neither_a_write_nor_a_search(
    pg: PostgresJobStore,
) -> None:
    job = _job(2, args=["a\x00b", "Needle", "c\\u0000d"], meta={"k": "v\x00"})
    await pg.insert(job, published=True)
    queries = pg.admin_queries()
    assert [j.id for j in await queries.page(JobQuery(type="t2.job"), 10, 0, True)] == [job.id]
    found = await queries.search("args", "needle", None, 10, 1000)
    assert [j.args for j in found] == [["a\x00b", "Needle", "c\\u0000d"]]
    assert await queries.search("args", "needle", "other-queue", 10, 1000) == []
    assert await queries.search("meta", "needle", None, 10, 1000) == []


async def test_migrating_a_version_1_store_fills_the_columns_of_its_rows(
    postgres_store_url: str,
) -> None:
    conn = await asyncpg.connect(parse(postgres_store_url).dsn, timeout=5)
    try:
        version, sql = migrations()[0]
        await conn.execute(sql)
        await conn.execute("CREATE TABLE ojs_schema_version (version integer PRIMARY KEY, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")  # fmt: skip
        await conn.execute("INSERT INTO ojs_schema_version (version) VALUES ($1)", version)
        await conn.execute(
            "INSERT INTO ojs_jobs VALUES ('old', 'q', 'available', 1, true, false, NULL, NULL, "
            """convert_to('{"type": "old.job", "created_at_ms": 77}', 'UTF8'))"""
        )
    finally:
        await conn.close()
    store = PostgresJobStore(postgres_store_url)
    await store.open()
    try:
        rows = await store._fetch("SELECT job_type, created_at_ms FROM ojs_jobs")
        assert [tuple(r) for r in rows] == [("old.job", 77)]
    finally:
        await store.close()
