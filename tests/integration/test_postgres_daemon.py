"""`ojs-amqp serve --store postgresql://…` end to end: a real daemon, the real broker and the
real PostgreSQL (one schema per test): the lifecycle, a SIGKILL with jobs in flight, a mixed
workload, a silent database, and conformance level 0."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ojs_amqp.core.ids import UUIDv7Generator
from tests.conformance.test_ojs_suite import REFUSED_ON_PURPOSE, run_suite
from tests.daemon import Daemon, request
from tests.faults.proxy import TcpProxy
from tests.postgres import admin_connect, private_schema, require_postgres, schema_of, with_query
from tests.workload import Workload


@pytest.fixture
def pg_url() -> Iterator[str]:
    with private_schema(require_postgres()) as url:
        yield url


@pytest.fixture
def pg_daemon(pg_url: str, make_daemon: Callable[..., Daemon]) -> Daemon:
    """(`pg_url` first: its schema is dropped after the daemon has stopped.)"""
    return make_daemon("--store", pg_url)


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with admin_connect() as conn:
        conn.execute(f"SET search_path = {schema_of(url)}")
        return conn.execute(sql).fetchall()


def _push(daemon: Daemon, queue: str, **options: object) -> str:
    push = {"type": "pg.test", "args": [1], "options": {"queue": queue, **options}}
    status, body = request("POST", f"{daemon.url}/ojs/v1/jobs", push)
    assert status == 201, body
    return str(body["job"]["id"])


def _fetch(
    daemon: Daemon, queue: str, worker: str = "w1", count: int = 1
) -> list[dict[str, object]]:
    status, body = request("POST", f"{daemon.url}/ojs/v1/workers/fetch",
                           {"queues": [queue], "worker_id": worker, "count": count})  # fmt: skip
    assert status == 200, body
    return list(body["jobs"])


def test_push_fetch_ack_through_a_daemon_on_postgresql(pg_daemon: Daemon, pg_url: str) -> None:
    job_id = _push(pg_daemon, "pgq")
    [job] = _fetch(pg_daemon, "pgq")
    assert job["id"] == job_id
    ack = {"job_id": job_id, "worker_id": "w1", "result": {"ok": True}}
    status, body = request("POST", f"{pg_daemon.url}/ojs/v1/workers/ack", ack)
    assert status == 200 and body["state"] == "completed"
    status, body = request("GET", f"{pg_daemon.url}/ojs/v1/jobs/{job_id}")
    assert body["job"]["state"] == "completed" and body["job"]["result"] == {"ok": True}
    # the record is in PostgreSQL, confirmed by the broker (out of the outbox)
    assert _rows(pg_url, f"SELECT state, published FROM ojs_jobs WHERE id = '{job_id}'") == [
        ("completed", True)
    ]
    status, health = request("GET", f"{pg_daemon.url}/ojs/v1/health")
    assert status == 200 and health["components"]["store"]["type"] == "postgresql"
    assert health["components"]["store"]["status"] == "ok"


def test_a_second_daemon_on_the_same_store_is_refused_at_start(
    pg_daemon: Daemon, pg_url: str, make_daemon: Callable[..., Daemon]
) -> None:
    second = make_daemon("--store", pg_url, start=False)
    with pytest.raises(RuntimeError, match="exited with 2"):
        second.start()
    assert second.log_path is not None
    assert "another ojs-amqp daemon has this PostgreSQL store open" in second.log_path.read_text()
    second.process = None  # refused on purpose: not a failed exit for the teardown's check
    assert _push(pg_daemon, "first")  # the first daemon serves on


def test_the_admin_api_and_the_dashboard_search_read_postgresql(
    pg_daemon: Daemon, pg_url: str
) -> None:
    """The admin lists, counts and search on PostgreSQL (store/postgres/admin_queries.py):
    the answers come from the columns migration 0002 fills, and a document with a NUL
    escape neither fails its push nor the lists and search around it."""
    first = _push(pg_daemon, "admin")
    nul = {"type": "pg.nul", "args": ["x\x00y", "Findme"], "options": {"queue": "admin"}}
    status, body = request("POST", f"{pg_daemon.url}/ojs/v1/jobs", nul)
    assert status == 201, body
    odd = body["job"]["id"]
    status, body = request("GET", f"{pg_daemon.url}/ojs/v1/admin/jobs?queue=admin&order=asc")
    assert status == 200, body
    assert [j["id"] for j in body["items"]] == [first, odd]
    assert body["pagination"]["total"] == 2
    status, body = request("GET", f"{pg_daemon.url}/ojs/v1/admin/jobs?type=pg.*&state=available")
    assert status == 200 and {j["id"] for j in body["items"]} == {first, odd}, body
    status, body = request("GET", f"{pg_daemon.url}/ojs/v1/admin/search?q=findme")
    assert status == 200, body
    assert [j["id"] for j in body["items"]] == [odd] and body["items"][0]["args"][0] == "x\x00y"
    status, body = request("GET", f"{pg_daemon.url}/ojs/v1/admin/search?q=%00")
    assert status == 400 and body["error"]["code"] == "invalid_request", body
    assert _rows(pg_url, f"SELECT job_type FROM ojs_jobs WHERE id = '{odd}'") == [("pg.nul",)]


def test_a_sigkill_with_jobs_leased_and_waiting_loses_none_on_restart(
    pg_daemon: Daemon, pg_url: str
) -> None:
    ids = [_push(pg_daemon, "inflight", visibility_timeout_ms=2000) for _ in range(30)]
    leased = _fetch(pg_daemon, "inflight", count=10)
    assert len(leased) == 10
    pg_daemon.kill()
    assert _rows(pg_url, "SELECT count(*) FROM ojs_jobs WHERE state = 'active'") == [(10,)]
    pg_daemon.start()
    done: set[str] = set()
    deadline = time.monotonic() + 60
    while len(done) < len(ids) and time.monotonic() < deadline:
        for job in _fetch(pg_daemon, "inflight", count=10):
            status, _ = request("POST", f"{pg_daemon.url}/ojs/v1/workers/ack",
                                {"job_id": job["id"], "worker_id": "w1"})  # fmt: skip
            if status == 200:
                done.add(str(job["id"]))
    assert done == set(ids)
    assert _rows(pg_url, "SELECT state, count(*) FROM ojs_jobs GROUP BY state") == [
        ("completed", 30)
    ]
    assert _rows(pg_url, "SELECT count(*) FROM ojs_jobs WHERE NOT published") == [(0,)]


def test_a_mixed_workload_with_a_sigkill_ends_every_job_as_its_worker_said(
    pg_daemon: Daemon, pg_url: str
) -> None:
    ids = UUIDv7Generator()
    kinds = ["ack", "fail", "retry", "scheduled", "cancel", "abandon", "ack", "retry"] * 15
    plan = {ids.new(int(time.time() * 1000)): kind for kind in kinds}
    run = Workload(pg_daemon.url, plan, queue="pgmix", workers=3, visibility_timeout_ms=3000,
                   settle_deadline_s=15.0).start()  # fmt: skip
    run.wait_for("a third of the jobs to finish", lambda: run.finished() >= 40, 60)
    pg_daemon.kill()
    time.sleep(0.5)
    pg_daemon.start()
    ledger = run.finish(90)
    print("\n" + ledger.line("postgresql crash", 0.0, transport_errors=run.transport_errors))
    ledger.check()
    states = dict(_rows(pg_url, "SELECT state, count(*) FROM ojs_jobs GROUP BY state"))
    assert sum(int(n) for n in states.values()) == len(plan)  # type: ignore[call-overload]
    assert set(states) <= {"completed", "discarded", "cancelled"}


def test_a_silent_database_makes_health_unhealthy_and_pushes_503_not_a_hang(
    pg_url: str, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    target = urlsplit(pg_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    try:
        url = with_query(
            target._replace(netloc=f"postgres@127.0.0.1:{proxy.port}").geturl(),
            connect_timeout="1", command_timeout="1",
        )  # fmt: skip
        daemon = make_daemon("--store", url)
        daemon.expected_errors.append("PostgreSQL store is unreachable")
        _push(daemon, "silent")
        proxy.freeze()
        started = time.monotonic()
        status, health = request("GET", f"{daemon.url}/ojs/v1/health", timeout=10)
        assert status == 503 and health["components"]["store"]["status"] == "unhealthy"
        assert "unreachable" in health["components"]["store"]["error"]
        status, ready = request("GET", f"{daemon.url}/ready", timeout=10)
        assert status == 503 and ready["store"] == "unhealthy"
        status, body = request("POST", f"{daemon.url}/ojs/v1/jobs",
                               {"type": "pg.test", "args": [], "options": {"queue": "silent"}},
                               timeout=10)  # fmt: skip
        assert status == 503 and body["error"]["code"] == "backend_error"
        assert time.monotonic() - started < 10
        proxy.thaw()
        deadline = time.monotonic() + 15
        while request("GET", f"{daemon.url}/ojs/v1/health", timeout=10)[0] != 200:
            assert time.monotonic() < deadline, "health did not recover with the database"
            time.sleep(0.3)
        assert _fetch(daemon, "silent")  # the job pushed before the outage is still there
        daemon.stop()  # while its database is still reachable
    finally:
        proxy.close()


@pytest.mark.conformance
@pytest.mark.timeout(600)
def test_conformance_level_0_passes_on_postgresql(pg_daemon: Daemon, tmp_path: Path) -> None:
    results = run_suite(pg_daemon, "level-0-core", tmp_path / "level-0-pg.json")
    failed = {k.split(":")[0]: v for k, v in results.items() if v["status"] != "pass"}
    assert len(results) == 65
    assert {k: v for k, v in failed.items() if k not in REFUSED_ON_PURPOSE} == {}
