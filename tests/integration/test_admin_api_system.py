"""The admin API's queue, dead-letter, worker and system endpoints against a real daemon:
run-time backpressure (kept across a restart), purge, dead letters, the worker registry,
stats and history, scopes, the redacted configuration, `/ojs/v1/crons`, and the static
files of --admin-ui-dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.daemon import Daemon
from tests.integration.admin_client import call, complete, fail, fetch, ok, push

ADMIN = "/ojs/v1/admin"
WRITE, READ, PRODUCER = "a" * 24, "r" * 24, "p" * 24


def test_backpressure_set_at_run_time_bounds_pushes_and_survives_a_restart(
    make_store_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_store_daemon()
    config = {"backpressure": {"max_depth": 4, "strategy": "reject", "warning_threshold": 0.5}}
    detail = ok(daemon, "PUT", f"{ADMIN}/queues/bounded/config", config)
    assert detail["configuration"]["backpressure"]["max_depth"] == 4
    headers = [call(daemon, "POST", "/ojs/v1/jobs",
                    {"type": "t", "args": [], "options": {"queue": "bounded"}})[2]
               for _ in range(4)]  # fmt: skip
    # depth counted with the job just accepted: 1/4 is below the warning threshold, 2/4 is not
    assert "X-OJS-Queue-Pressure" not in headers[0]
    assert headers[1]["X-OJS-Queue-Pressure"] == "0.50" and headers[1]["X-OJS-Queue-Depth"] == "2"
    assert headers[3]["X-OJS-Queue-Pressure"] == "1.00" and headers[3]["X-OJS-Queue-Bound"] == "4"
    one = {"type": "t", "args": [], "options": {"queue": "bounded"}}
    status, body, got = call(daemon, "POST", "/ojs/v1/jobs", one)
    assert status == 429 and body["error"]["code"] == "queue_full" and got["Retry-After"]
    stats = ok(daemon, "GET", "/ojs/v1/queues/bounded/stats")["stats"]
    assert stats["depth"] == 4 and stats["max_depth"] == 4 and stats["pressure"] == 1.0

    # what cannot be applied is refused, and changes nothing
    for bad in ({"concurrency": 3}, {"backpressure": {"max_depth": 9, "strategy": "block"}},
                {"rate_limit": {"limit": 1, "period": "PT1S"}}):  # fmt: skip
        status, body, _ = call(daemon, "PUT", f"{ADMIN}/queues/bounded/config", bad)
        assert status == 422 and body["error"]["code"] == "unsupported", bad
    status, body, _ = call(daemon, "PUT", f"{ADMIN}/queues/bounded/config",
                           {"backpressure": {"max_depth": -1}})  # fmt: skip
    assert status == 400 and body["error"]["details"]["field"] == "backpressure.max_depth"

    daemon.stop()
    daemon.start()
    assert call(daemon, "POST", "/ojs/v1/jobs",
                {"type": "t", "args": [], "options": {"queue": "bounded"}})[0] == 429  # fmt: skip
    ok(daemon, "PUT", f"{ADMIN}/queues/bounded/config", {"backpressure": {"max_depth": 0}})
    push(daemon, "bounded")  # unbounded again


def test_queues_list_counts_and_purge_of_finished_jobs(
    make_store_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_store_daemon()
    for _ in range(3):
        push(daemon, "pq")
    for job_id in fetch(daemon, "pq", count=2):
        complete(daemon, job_id)
    queues = ok(daemon, "GET", f"{ADMIN}/queues")
    [item] = [q for q in queues["items"] if q["name"] == "pq"]
    assert item["counts"]["completed"] == 2 and item["counts"]["available"] == 1
    assert item["depth"] == 1 and item["throughput"]["processed_per_minute"] == 2
    detail = ok(daemon, "GET", f"{ADMIN}/queues/pq")
    assert detail["oldest_available_at"] is not None
    assert detail["configuration"]["retention"]["completed"] == "PT168H"
    assert call(daemon, "GET", f"{ADMIN}/queues/nope")[0] == 404

    status, body, _ = call(daemon, "DELETE", f"{ADMIN}/queues/pq/jobs", {"states": ["completed"]})
    assert status == 400 and body["error"]["details"]["field"] == "confirm"
    status, body, _ = call(daemon, "DELETE", f"{ADMIN}/queues/pq/jobs",
                           {"states": ["available"], "confirm": True})  # fmt: skip
    assert status == 422 and body["error"]["details"]["unsupported"] == ["available"]
    got = ok(
        daemon,
        "DELETE",
        f"{ADMIN}/queues/pq/jobs",
        {"states": ["completed"], "older_than": "2000-01-01T00:00:00Z", "confirm": True},
    )
    assert got["purged_count"] == 0  # none finished that long ago
    got = ok(
        daemon, "DELETE", f"{ADMIN}/queues/pq/jobs", {"states": ["completed"], "confirm": True}
    )
    assert got["purged_count"] == 2 and got["states"] == ["completed"]
    counts = ok(daemon, "GET", f"{ADMIN}/queues/pq")["counts"]
    assert counts["completed"] == 0 and counts["available"] == 1


def test_dead_letters_filter_stats_bulk_retry_and_purge(
    make_store_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_store_daemon()
    dead = {}
    for queue, code in (("dl-a", "timeout"), ("dl-a", "boom"), ("dl-b", "boom")):
        job_id = push(daemon, queue, retry={"max_attempts": 1, "on_exhaustion": "dead_letter"})
        fetch(daemon, queue)
        fail(daemon, job_id, code)
        dead[job_id] = queue
    listed = ok(daemon, "GET", f"{ADMIN}/dead-letter?queue=dl-a&per_page=1")
    assert listed["pagination"]["total"] == 2 and len(listed["items"]) == 1
    assert listed["items"][0]["errors"][-1]["code"] in ("timeout", "boom")
    stats = ok(daemon, "GET", f"{ADMIN}/dead-letter/stats")
    assert stats == {"total": 3, "by_queue": {"dl-a": 2, "dl-b": 1},
                     "by_error_type": {"boom": 2, "timeout": 1}}  # fmt: skip

    status, _, _ = call(daemon, "POST", f"{ADMIN}/dead-letter/retry", {"filter": {"queue": "dl-b"}})
    assert status == 400
    got = ok(daemon, "POST", f"{ADMIN}/dead-letter/retry",
             {"filter": {"queue": "dl-b"}, "confirm": True})  # fmt: skip
    assert got["succeeded"] == 1 and len(fetch(daemon, "dl-b")) == 1
    assert call(daemon, "DELETE", f"{ADMIN}/dead-letter", {})[0] == 400
    got = ok(daemon, "DELETE", f"{ADMIN}/dead-letter", {"confirm": True})
    assert got["purged_count"] == 2
    assert ok(daemon, "GET", f"{ADMIN}/dead-letter/stats")["total"] == 0


def test_workers_are_listed_with_queues_and_jobs_quieted_and_only_stale_ones_forgotten(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    job_id = push(daemon, "wq")
    assert fetch(daemon, "wq", worker="w-admin") == [job_id]
    listing = ok(daemon, "GET", f"{ADMIN}/workers")
    [worker] = [w for w in listing["items"] if w["id"] == "w-admin"]
    assert worker["queues"] == ["wq"] and worker["jobs"] == [job_id]
    assert worker["state"] == "running" and worker["kind"] == "http"
    assert listing["summary"]["total"] >= 1 and listing["summary"]["running"] >= 1

    ok(daemon, "POST", f"{ADMIN}/workers/w-admin/quiet")
    beat = ok(daemon, "POST", "/ojs/v1/workers/heartbeat",
              {"worker_id": "w-admin", "active_jobs": [job_id]})  # fmt: skip
    assert beat["directive"] == "quiet"
    assert [w["state"] for w in ok(daemon, "GET", f"{ADMIN}/workers")["items"]] == ["quiet"]
    push(daemon, "wq")
    assert fetch(daemon, "wq", worker="w-admin") == []  # a quiet worker gets no new job
    status, body, _ = call(daemon, "DELETE", f"{ADMIN}/workers/w-admin")
    assert status == 409 and body["error"]["code"] == "conflict"
    assert call(daemon, "POST", f"{ADMIN}/workers/nobody/quiet")[0] == 404
    ok(daemon, "POST", "/ojs/v1/workers/heartbeat", {"worker_id": "w-beats", "active_jobs": []})
    assert "w-beats" in [w["id"] for w in ok(daemon, "GET", f"{ADMIN}/workers")["items"]]


def test_stats_and_history_count_what_happened(make_store_daemon: Callable[..., Daemon]) -> None:
    daemon = make_store_daemon()
    for _ in range(3):
        push(daemon, "st")
    complete(daemon, fetch(daemon, "st")[0])
    failing = fetch(daemon, "st")[0]
    fail(daemon, failing)
    stats = ok(daemon, "GET", f"{ADMIN}/stats")
    assert stats["jobs"]["completed"] == 1 and stats["throughput"]["processed_per_minute"] == 1
    assert stats["throughput"]["failed_per_minute"] == 1 and stats["queues"] >= 1
    history = ok(daemon, "GET", f"{ADMIN}/stats/history?period=1m&queue=st")
    assert history["period"] == "1m" and len(history["data"]) >= 60
    assert sum(p["enqueued"] for p in history["data"]) == 3
    assert sum(p["processed"] for p in history["data"]) == 1
    assert call(daemon, "GET", f"{ADMIN}/stats/history?period=7m")[0] == 400


def test_admin_scopes_read_only_and_write_apart_from_producer_tokens(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin:{WRITE}\nadmin-read:{READ}\nproducer:{PRODUCER}\n")
    daemon = make_daemon("--auth-tokens-file", str(tokens), test_mode=False)
    job_id = call(daemon, "POST", "/ojs/v1/jobs", {"type": "t", "args": []}, PRODUCER)[1]["job"][
        "id"
    ]
    assert call(daemon, "GET", f"{ADMIN}/jobs/{job_id}", token=READ)[0] == 200
    assert call(daemon, "GET", f"{ADMIN}/stats", token=READ)[0] == 200
    assert call(daemon, "GET", f"/ojs/v1/jobs/{job_id}", token=READ)[0] == 200
    status, body, _ = call(daemon, "POST", f"{ADMIN}/jobs/{job_id}/cancel", token=READ)
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert call(daemon, "POST", "/ojs/v1/jobs", {"type": "t", "args": []}, READ)[0] == 403
    assert call(daemon, "GET", f"{ADMIN}/stats", token=PRODUCER)[0] == 403
    assert call(daemon, "GET", f"{ADMIN}/stats")[0] == 401
    assert call(daemon, "POST", f"{ADMIN}/jobs/{job_id}/cancel", token=WRITE)[0] == 200

    status, config, _ = call(daemon, "GET", f"{ADMIN}/system/config", token=READ)
    assert status == 200 and WRITE not in str(config) and READ not in str(config)
    assert {t["secret"] for t in config["config"]["auth_tokens"]} == {"***"}
    assert "guest:***@" in config["config"]["amqp_url"]


def test_maintenance_mode_is_refused_not_half_done(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    assert ok(daemon, "GET", f"{ADMIN}/system/maintenance")["enabled"] is False
    status, body, _ = call(daemon, "POST", f"{ADMIN}/system/maintenance", {"enabled": True})
    assert status == 422 and body["error"]["code"] == "unsupported"
    assert ok(daemon, "POST", f"{ADMIN}/system/maintenance", {"enabled": False})["enabled"] is False
    status, body, _ = call(daemon, "POST", f"{ADMIN}/queues/x/pause")
    assert status == 422 and body["error"]["code"] == "unsupported"


def test_events_in_the_admin_uis_paged_shape(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    first, second = push(daemon, "ev"), push(daemon, "ev")
    got = ok(daemon, "GET", "/ojs/v1/events?type=job.enqueued&page=1&per_page=1")
    assert got["pagination"]["total"] == 2 and got["items"][0]["data"]["job_id"] == second
    assert got["items"][0]["timestamp"] == got["items"][0]["time"]
    page2 = ok(daemon, "GET", "/ojs/v1/events?type=job.enqueued&page=2&per_page=1")
    assert page2["items"][0]["data"]["job_id"] == first
    later = ok(daemon, "GET", "/ojs/v1/events?per_page=50&since=2999-01-01T00:00:00Z")
    assert later["items"] == []
    assert "events" in ok(daemon, "GET", "/ojs/v1/events?types=job.enqueued")  # the spec's shape


def test_crons_under_the_admin_uis_plural_path(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    ok(daemon, "POST", "/ojs/v1/cron", {"name": "nightly", "expression": "0 3 * * *",
       "job_template": {"type": "t", "args": [], "options": {"queue": "cq"}}}, 201)  # fmt: skip
    [item] = ok(daemon, "GET", "/ojs/v1/crons")["items"]
    assert item["id"] == "nightly" and item["schedule"] == "0 3 * * *" and item["queue"] == "cq"
    assert ok(daemon, "PATCH", "/ojs/v1/crons/nightly", {"enabled": False})["enabled"] is False
    assert ok(daemon, "GET", "/ojs/v1/cron/nightly")["cron"]["status"] == "paused"
    assert call(daemon, "PATCH", "/ojs/v1/crons/nightly", {"enabled": "no"})[0] == 400
    assert call(daemon, "DELETE", "/ojs/v1/crons/nightly")[0] == 204
    assert call(daemon, "GET", "/ojs/v1/crons/nightly")[0] == 404


def test_admin_ui_dir_serves_files_with_the_single_page_fallback(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    ui = tmp_path / "ui"
    (ui / "assets").mkdir(parents=True)
    (ui / "index.html").write_text("<!doctype html><title>ui</title>")
    (ui / "assets" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("outside")
    daemon = make_daemon("--admin-ui-dir", str(ui))
    status, _, headers = call(daemon, "GET", "/ojs/admin")
    assert status == 200 and "<title>ui</title>" in str(call(daemon, "GET", "/ojs/admin/")[1])
    for route in ("/ojs/admin/jobs", "/ojs/admin/jobs/0195-x", "/ojs/admin/dead-letter"):
        status, body, headers = call(daemon, "GET", route)
        assert status == 200 and b"<title>ui</title>" in body, route
        assert headers["Content-Type"].startswith("text/html")
    for route in ("/ojs/admin/assets/app.js", "/ojs/admin/queues/assets/app.js"):
        status, body, headers = call(daemon, "GET", route)
        assert (
            status == 200 and body == b"console.log(1)" and "javascript" in headers["Content-Type"]
        )
    assert call(daemon, "GET", "/ojs/admin/assets/missing.js")[0] == 404
    assert call(daemon, "GET", "/ojs/admin/..%2fsecret.txt")[1] != b"outside"


async def test_native_sdk_workers_join_the_registry(make_daemon: Callable[..., Daemon]) -> None:
    import asyncio

    from ojs_amqp.sdk import Client, JobContext, Worker
    from tests.daemon import AMQP_URL

    daemon = make_daemon()
    release = asyncio.Event()

    async def slow(ctx: JobContext) -> str:
        await release.wait()
        return "done"

    worker = Worker(AMQP_URL, prefix=daemon.prefix, queues=["native-q"], handlers={"slow": slow})
    task = asyncio.create_task(worker.run(handle_signals=False))
    try:
        async with asyncio.timeout(15):
            while True:  # the worker's hello reaches the daemon
                items = (await asyncio.to_thread(ok, daemon, "GET", f"{ADMIN}/workers"))["items"]
                mine = [w for w in items if w["id"] == worker.worker_id]
                if mine:
                    break
                await asyncio.sleep(0.1)
        assert mine[0]["kind"] == "native" and mine[0]["queues"] == ["native-q"]
        async with Client(AMQP_URL, prefix=daemon.prefix, timeout=5.0) as client:
            job = await client.push("slow", [], queue="native-q")
        release.set()
        async with asyncio.timeout(15):
            while True:  # a push over AMQP: the daemon adopts it as it sees it go by
                status, body, _ = await asyncio.to_thread(
                    call, daemon, "GET", f"{ADMIN}/jobs/{job.id}"
                )
                if status == 200 and body["state"] == "completed":
                    break
                await asyncio.sleep(0.1)
        items = (await asyncio.to_thread(ok, daemon, "GET", f"{ADMIN}/workers"))["items"]
        [me] = [w for w in items if w["id"] == worker.worker_id]
        assert me["jobs"] == [] and me["state"] == "running"  # reported on: no longer held
    finally:
        await worker.stop(grace_period=1.0)
        await task
