"""Progress (ojs-progress) against a real daemon and broker: over HTTP from an HTTP worker,
over AMQP from the Python SDK's ctx.progress, and without a store write per report."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ojs_amqp.core.progress import ProgressUpdate
from ojs_amqp.engine.jobs import PROGRESS_FLUSH_S, JobEngine
from ojs_amqp.sdk import Client, JobContext, Worker
from tests.daemon import AMQP_URL, Daemon, request

pytestmark = pytest.mark.integration


def _queue() -> str:
    return f"prg-{uuid.uuid4().hex[:8]}"


def _active_job(daemon: Daemon, queue: str, **options: Any) -> str:
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/jobs",
        {"type": "test.progress", "args": [], "options": {"queue": queue, **options}},
    )  # fmt: skip
    assert status == 201, body
    status, fetched = request(
        "POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": [queue], "worker_id": "w-prg"}
    )
    assert status == 200 and fetched["jobs"][0]["id"] == body["job"]["id"], fetched
    return str(body["job"]["id"])


def _put(daemon: Daemon, job_id: str, report: dict[str, Any]) -> tuple[int, Any]:
    return request("PUT", f"{daemon.url}/ojs/v1/jobs/{job_id}/progress", report)


def test_an_http_worker_reports_progress_and_the_job_the_events_and_ack_show_it(
    module_daemon: Daemon,
) -> None:
    url = module_daemon.url
    job_id = _active_job(module_daemon, _queue())
    status, none_yet = request("GET", f"{url}/ojs/v1/jobs/{job_id}/progress")
    assert status == 200
    assert none_yet == {"job_id": job_id, "state": "active", "progress": None, "message": None,
                        "data": None, "updated_at": None}  # fmt: skip
    status, put = _put(
        module_daemon, job_id, {"progress": 0.4, "message": "rows", "data": {"n": 4}}
    )
    assert status == 200 and put["applied"] is True
    assert (put["progress"], put["message"], put["data"]) == (0.4, "rows", {"n": 4})
    # Lower values keep the higher one (PRG-003); more than 1.0 is clamped (PRG-002).
    assert _put(module_daemon, job_id, {"progress": 0.2})[1]["progress"] == 0.4
    status, job = request("GET", f"{url}/ojs/v1/jobs/{job_id}")
    assert job["job"]["progress"]["progress"] == 0.4 and job["job"]["progress"]["message"] == "rows"
    assert _put(module_daemon, job_id, {"progress": 7})[1]["progress"] == 1.0
    status, events = request("GET", f"{url}/ojs/v1/events?types=progress.updated&limit=50")
    mine = [e for e in events["events"] if e["data"]["job_id"] == job_id]
    assert mine and mine[0]["data"]["progress"] == 0.4 and mine[0]["data"]["message"] == "rows"
    status, _ = request("POST", f"{url}/ojs/v1/workers/ack", {"job_id": job_id, "result": 1})
    assert status == 200
    status, done = request("GET", f"{url}/ojs/v1/jobs/{job_id}/progress")
    assert done["state"] == "completed" and done["progress"] == 1.0 and done["data"] == {"n": 4}


def test_progress_on_a_job_that_is_not_active_changes_nothing_and_bad_reports_are_refused(
    module_daemon: Daemon,
) -> None:
    url = module_daemon.url
    status, body = request(
        "POST", f"{url}/ojs/v1/jobs", {"type": "test.progress", "args": [],
                                       "options": {"queue": _queue()}},
    )  # fmt: skip
    job_id = body["job"]["id"]
    status, ignored = _put(module_daemon, job_id, {"progress": 0.5})
    assert status == 200 and ignored["applied"] is False and ignored["progress"] is None
    assert "available" in ignored["reason"]
    missing = str(uuid.uuid4())
    status, error = _put(module_daemon, missing, {"progress": 0.5})
    assert status == 404 and error["error"]["code"] == "not_found"
    status, error = _put(module_daemon, job_id, {"progress": "half"})
    assert status == 400 and error["error"]["code"] == "invalid_request"
    assert error["error"]["details"]["field"] == "progress"
    status, error = _put(module_daemon, job_id, {})
    assert status == 400 and "progress" in error["error"]["message"]


def test_progress_counts_as_a_heartbeat_and_a_retry_starts_without_it(
    module_daemon: Daemon,
) -> None:
    url = module_daemon.url
    queue = _queue()
    job_id = _active_job(module_daemon, queue, visibility_timeout_ms=1500)
    for step in range(5):  # 3 s of progress, twice the lease: the lease keeps being extended
        assert _put(module_daemon, job_id, {"progress": step / 10})[1]["applied"] is True
        time.sleep(0.6)
    status, job = request("GET", f"{url}/ojs/v1/jobs/{job_id}")
    assert job["job"]["state"] == "active" and job["job"]["progress"]["progress"] == 0.4
    status, nacked = request(
        "POST", f"{url}/ojs/v1/workers/nack",
        {"job_id": job_id, "error": {"message": "x"}, "requeue": True},
    )  # fmt: skip
    assert status == 200, nacked
    status, fetched = request("POST", f"{url}/ojs/v1/workers/fetch", {"queues": [queue]})
    assert fetched["jobs"][0]["id"] == job_id and "progress" not in fetched["jobs"][0]
    status, fresh = request("GET", f"{url}/ojs/v1/jobs/{job_id}/progress")
    assert fresh["progress"] is None and fresh["state"] == "active"


async def test_many_reports_cost_one_store_write_and_one_event_per_second(
    live_engine: JobEngine,
) -> None:
    engine = live_engine
    queue = _queue()
    job = await engine.push({"type": "test.progress", "args": [], "options": {"queue": queue}})
    [active] = await engine.fetch([queue], 1, "w", None)
    assert active.id == job.id
    writes: list[str] = []
    update = engine.store.update

    async def counting(job: Any, **kwargs: Any) -> bool:
        writes.append(job.id)
        return await update(job, **kwargs)

    engine.store.update = counting  # type: ignore[method-assign]
    events_before = len(engine.events.query(limit=10_000)[0])
    start = time.monotonic()
    for n in range(500):
        _, applied = await engine.report_progress(job.id, ProgressUpdate(n / 1000))
        assert applied
    burst_s = time.monotonic() - start
    assert burst_s < PROGRESS_FLUSH_S  # the burst fits in one flush period
    read = await engine.get(job.id)  # reads see the latest at once
    assert read.progress is not None and read.progress["progress"] == pytest.approx(0.499)
    await asyncio.sleep(PROGRESS_FLUSH_S * 2.5)
    # 500 reports, one store write per flush period: one, or two if a flush fell inside the
    # burst.
    assert writes in ([job.id], [job.id, job.id])
    stored = await engine.store.get(job.id)
    assert stored is not None and stored.progress is not None
    assert stored.progress["progress"] == pytest.approx(0.499)
    events = [e for e in engine.events.query(limit=10_000)[0][events_before:]
              if e["type"] == "progress.updated"]  # fmt: skip
    # The first report is announced at once, the latest by the next flush (and one in
    # between if a flush fell inside the burst): two or three events, not 500.
    values = [e["data"]["progress"] for e in events]
    assert 2 <= len(values) <= 1 + len(writes) and values == sorted(values)
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.499)
    done = await engine.ack(job.id, None, "w")
    assert done.progress is not None and done.progress["progress"] == 1.0


async def test_the_sdk_reports_progress_over_amqp_and_the_daemon_shows_it(
    module_daemon: Daemon, tmp_path: Path
) -> None:
    queue = _queue()
    seen: list[Any] = []
    release = asyncio.Event()

    async def long(ctx: JobContext) -> str:
        ctx.progress(0.25, "a quarter", {"step": 1})
        ctx.progress(0.5, "half")  # the latest before the next send wins
        await asyncio.wait_for(release.wait(), 20)
        return "ok"

    async with Client(AMQP_URL, prefix=module_daemon.prefix, timeout=5.0) as client:
        job = await client.push("sdk.long", [], queue=queue)
        worker = Worker(AMQP_URL, prefix=module_daemon.prefix, queues=[queue],
                        handlers={"sdk.long": long}, heartbeat_interval=30.0)  # fmt: skip
        task = asyncio.create_task(worker.run(handle_signals=False))
        try:
            deadline = time.monotonic() + 15
            body: Any = None
            while time.monotonic() < deadline:
                _, body = await asyncio.to_thread(
                    request, "GET", f"{module_daemon.url}/ojs/v1/jobs/{job.id}/progress"
                )
                if body.get("progress") is not None:
                    break
                await asyncio.sleep(0.1)
            seen.append(body)
            release.set()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                _, body = await asyncio.to_thread(
                    request, "GET", f"{module_daemon.url}/ojs/v1/jobs/{job.id}/progress"
                )
                if body["state"] == "completed":
                    break
                await asyncio.sleep(0.1)
            seen.append(body)
        finally:
            await worker.stop(grace_period=1.0)
            await task
    first, last = seen
    # A heartbeat every 30 s: the job is active because its progress report said so.
    assert first["state"] == "active"
    assert (first["progress"], first["message"], first["data"]) == (0.5, "half", {"step": 1})
    assert last["state"] == "completed" and last["progress"] == 1.0


async def test_a_threaded_handler_reports_progress_in_a_tight_loop_without_heartbeats(
    module_daemon: Daemon,
) -> None:
    queue = _queue()
    url = module_daemon.url

    def crunch(ctx: JobContext) -> int:  # a plain function: runs in the thread pool
        for n in range(1, 301):
            ctx.progress(n / 300, f"row {n}")
            time.sleep(0.01)
        return 300

    async with Client(AMQP_URL, prefix=module_daemon.prefix, timeout=5.0) as client:
        job = await client.push("sdk.crunch", [], queue=queue)
        worker = Worker(AMQP_URL, prefix=module_daemon.prefix, queues=[queue],
                        handlers={"sdk.crunch": crunch}, heartbeat_interval=0)  # fmt: skip
        task = asyncio.create_task(worker.run(handle_signals=False))
        seen: list[float] = []
        try:
            deadline = time.monotonic() + 20
            body: Any = {}
            while time.monotonic() < deadline and body.get("state") != "completed":
                await asyncio.sleep(0.1)
                status, body = await asyncio.to_thread(
                    request, "GET", f"{url}/ojs/v1/jobs/{job.id}/progress"
                )
                # A binding-PUSH job: unknown to the daemon until its first progress report
                # (which carries the envelope) adopts it.
                assert status in (200, 404), body
                if status == 200 and body["state"] == "active" and body["progress"] is not None:
                    seen.append(body["progress"])
        finally:
            await worker.stop(grace_period=1.0)
            await task
    assert body["state"] == "completed" and body["progress"] == 1.0
    assert seen and 0 < seen[0] < 1 and seen == sorted(seen)
    _, events = await asyncio.to_thread(
        request, "GET", f"{url}/ojs/v1/events?types=progress.updated&limit=200"
    )
    mine = [e for e in events["events"] if e["data"]["job_id"] == job.id]
    # 300 reports in about 3 s: a report a second reaches the daemon, not 300.
    assert 1 <= len(mine) <= 6
