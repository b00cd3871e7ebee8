"""The admin API's job endpoints against a real daemon: filters, both kinds of pagination,
detail, cancel and retry, bulk actions with and without `confirm`, and the indexes behind
the filters."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable

from ojs_amqp.core.times import format_ms
from ojs_amqp.store.admin_queries import JobQuery, SqliteAdminQueries
from tests.daemon import Daemon
from tests.integration.admin_client import call, complete, fail, fetch, ok, push

JOBS = "/ojs/v1/admin/jobs"


def test_jobs_are_filtered_by_queue_state_type_and_time_and_paged_both_ways(
    make_store_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_store_daemon()
    mails = [push(daemon, "mail", "mail.send") for _ in range(5)]
    cut = format_ms(time.time_ns() // 1_000_000 + 1)
    time.sleep(0.01)
    texts = [push(daemon, "sms", "sms.send") for _ in range(3)]
    [leased] = fetch(daemon, "mail")
    complete(daemon, leased)

    def ids(query: str) -> list[str]:
        return [j["id"] for j in ok(daemon, "GET", f"{JOBS}?{query}")["items"]]

    assert ids("queue=mail&order=asc") == mails
    assert set(ids("queue=mail&state=available")) == set(mails) - {leased}
    assert ids("state=completed") == [leased]
    assert ids("type=sms.send") == texts[::-1]  # newest first by default
    assert set(ids("type=mail.*")) == set(mails)
    assert ids(f"until={cut}&order=asc") == mails
    assert ids(f"since={cut}&order=asc") == texts
    assert ids("queue=sms&state=available,completed&order=asc") == texts

    # page/per_page and limit/offset walk the same order
    first = ok(daemon, "GET", f"{JOBS}?page=2&per_page=3&order=asc")
    assert [j["id"] for j in first["items"]] == (mails + texts)[3:6]
    assert first["pagination"] == {"total": 8, "page": 2, "per_page": 3, "limit": 3,
                                   "offset": 3, "has_more": True}  # fmt: skip
    second = ok(daemon, "GET", f"{JOBS}?limit=3&offset=6&order=asc")
    assert [j["id"] for j in second["items"]] == texts[1:]
    assert second["pagination"]["has_more"] is False and second["pagination"]["page"] == 3
    assert len(ok(daemon, "GET", f"{JOBS}?per_page=1000")["items"]) == 8  # clamped to 100

    for bad, field in [("state=nope", "state"), ("page=0", "page"), ("limit=x", "limit"),
                       ("since=yesterday", "since"), ("sort=priority", "sort")]:  # fmt: skip
        status, body, _ = call(daemon, "GET", f"{JOBS}?{bad}")
        assert status == 400 and body["error"]["code"] == "invalid_request", bad
        assert body["error"]["details"]["field"] == field
    status, body, _ = call(daemon, "GET", f"{JOBS}?page=1&limit=5")
    assert status == 400 and "not both" in body["error"]["message"]


def test_job_detail_cancel_and_retry(make_store_daemon: Callable[..., Daemon]) -> None:
    daemon = make_store_daemon()
    job_id = push(daemon, "detail", meta={"tenant": "acme"}, retry={"max_attempts": 1})
    detail = ok(daemon, "GET", f"{JOBS}/{job_id}")
    assert detail["id"] == job_id and detail["args"] == ["detail"] and detail["errors"] == []
    assert detail["meta"] == {"tenant": "acme"} and detail["state"] == "available"
    assert detail["metadata"]["created_at"] == detail["created_at"]
    assert detail["metadata"]["completed_at"] is None

    # retry: only a discarded job; this one is available
    status, body, _ = call(daemon, "POST", f"{JOBS}/{job_id}/retry")
    assert status == 409 and body["error"]["details"]["current_state"] == "available"
    fetch(daemon, "detail")
    fail(daemon, job_id)
    assert ok(daemon, "GET", f"{JOBS}/{job_id}")["state"] == "discarded"
    retried = ok(daemon, "POST", f"{JOBS}/{job_id}/retry")
    assert retried["state"] == "available" and retried["attempt"] == 0
    assert [e["code"] for e in retried["errors"]] == ["boom"]  # history kept
    assert fetch(daemon, "detail") == [job_id]  # really back in its queue

    cancelled = ok(daemon, "POST", f"{JOBS}/{job_id}/cancel")  # a running job, too
    assert cancelled["state"] == "cancelled"
    status, body, _ = call(daemon, "POST", f"{JOBS}/{job_id}/cancel")
    assert status == 409 and body["error"]["code"] == "conflict"
    status, body, _ = call(daemon, "GET", f"{JOBS}/019539a4-0000-7000-8000-000000000abc")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, _ = call(daemon, "PATCH", f"{JOBS}/{job_id}", {"priority": 5})
    assert status == 422 and body["error"]["code"] == "unsupported"


def test_scheduled_jobs_list_in_the_order_they_fall_due(
    make_store_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_store_daemon()
    late = push(daemon, "later", delay_until="2031-01-01T00:00:00Z")
    soon = push(daemon, "later", delay_until="2030-01-01T00:00:00Z")
    got = ok(daemon, "GET", f"{JOBS}?state=scheduled&sort=scheduled_at&order=asc")
    assert [j["id"] for j in got["items"]] == [soon, late]
    status, body, _ = call(daemon, "GET", f"{JOBS}?state=available&sort=scheduled_at")
    assert status == 400 and body["error"]["details"]["field"] == "sort"


def test_bulk_actions_need_confirm_and_say_what_they_did(
    make_store_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_store_daemon()
    waiting = [push(daemon, "bulk", "b.job") for _ in range(4)]
    other = push(daemon, "other", "b.job")
    for action in ("cancel", "retry", "delete"):
        for body in (
            {"filter": {"queue": "bulk"}},
            {"filter": {"queue": "bulk"}, "confirm": "yes"},
        ):
            status, answer, _ = call(daemon, "POST", f"{JOBS}/bulk/{action}", body)
            assert status == 400 and answer["error"]["details"]["field"] == "confirm"
    assert {j["state"] for j in ok(daemon, "GET", f"{JOBS}?queue=bulk")["items"]} == {"available"}

    got = ok(daemon, "POST", f"{JOBS}/bulk/cancel", {"filter": {"queue": "bulk"}, "confirm": True})
    assert got == {"action": "cancel", "matched": 4, "processed": 4, "succeeded": 4, "failed": 0,
                   "remaining": 0, "errors": []}  # fmt: skip
    assert fetch(daemon, "bulk") == []  # cancelled jobs are never handed out
    assert ok(daemon, "GET", f"{JOBS}/{other}")["state"] == "available"  # outside the filter

    # explicit states that cannot be acted on are reported one by one
    got = ok(
        daemon,
        "POST",
        f"{JOBS}/bulk/delete",
        {"filter": {"type": "b.job", "state": ["cancelled", "available"]}, "confirm": True},
    )
    assert got["matched"] == 5 and got["succeeded"] == 4 and got["failed"] == 1
    assert got["errors"][0]["job_id"] == other and got["errors"][0]["code"] == "conflict"
    for job_id in waiting:
        assert call(daemon, "GET", f"{JOBS}/{job_id}")[0] == 404

    discarded = push(daemon, "again", retry={"max_attempts": 1})
    fetch(daemon, "again")
    fail(daemon, discarded)
    got = ok(daemon, "POST", f"{JOBS}/bulk/retry", {"filter": {"queue": "again"}, "confirm": True})
    assert got["succeeded"] == 1 and fetch(daemon, "again") == [discarded]


def test_each_filter_is_served_by_an_index(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    push(daemon, "plans")  # the daemon has opened its store and added the admin indexes
    db = sqlite3.connect(f"file:{daemon.store}?mode=ro", uri=True)
    try:
        queries = SqliteAdminQueries.__new__(SqliteAdminQueries)
        queries._db = db  # read-only: the indexes exist already
        cases = {
            JobQuery(): "admin_jobs_created",
            JobQuery(queue="q"): "admin_jobs_queue",
            JobQuery(queue="q", states=("available",)): "admin_jobs_queue_state",
            JobQuery(states=("completed",), since_ms=1): "admin_jobs_state",
            JobQuery(states=("scheduled",), by_due_time=True): "admin_jobs_state_due",
            JobQuery(type="t.job"): "admin_jobs_type",
            JobQuery(type_prefix="t."): "admin_jobs_type",
            JobQuery(dead_letter=True, queue="q"): "admin_dead_queue",
            JobQuery(dead_letter=True, type="t.job"): "admin_dead_type",
            JobQuery(dead_letter=True): "jobs_dead",
        }
        for query, index in cases.items():
            plan = " ".join(asyncio.run(queries.explain(query)))
            assert f"INDEX {index}" in plan, (query, plan)
            assert "SCAN jobs" not in plan or "USING INDEX" in plan, (query, plan)
    finally:
        db.close()
