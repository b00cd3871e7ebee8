"""Acceptance: a SIGKILL in the middle of a busy run loses no job and leaves none stuck.

A producer thread pushes 500 jobs with client-chosen UUIDv7 ids while HTTP worker threads
fetch and ack (or nack) them. Once ~40% have reached a terminal state, and while pushes are
still going on, the daemon is killed with SIGKILL and started again on the same store, port
and topology. Producer and workers ride out the outage the way real clients would: retry
the same id, tolerate connection errors, 5xx and 409. In the end every job must exist and be
in exactly the terminal state its worker reported. Duplicate executions are allowed
(at-least-once) but counted and printed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import aio_pika
import orjson

from ojs_amqp.amqp import codec
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.core import lifecycle
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.job import JobState, from_record
from ojs_amqp.core.retry import FailureReport
from tests.daemon import AMQP_URL, Daemon, request
from tests.workload import Workload

TOTAL_JOBS = 500
FAIL_EVERY = 5  # every 5th job fails: 20%
KILL_AT_TERMINAL = int(TOTAL_JOBS * 0.4)
RECOVERY_DEADLINE_S = 90.0


def test_sigkill_mid_run_loses_no_job_and_leaves_none_stuck(daemon: Daemon) -> None:
    # Given 500 jobs with client-chosen UUIDv7 ids, 20% of them told to fail for good
    ids_gen = UUIDv7Generator()
    plan = {
        ids_gen.new(int(time.time() * 1000)): "fail" if n % FAIL_EVERY == 0 else "ack"
        for n in range(TOTAL_JOBS)
    }
    run = Workload(
        daemon.url, plan, queue="crash", workers=4, visibility_timeout_ms=3000,
        settle_deadline_s=15.0,
    ).start()  # fmt: skip
    started = time.monotonic()

    # When ~40% of the jobs are finished and pushes are still going on, SIGKILL the daemon
    run.wait_for("40% of the jobs to finish", lambda: run.finished() >= KILL_AT_TERMINAL, 30)
    daemon.kill()
    killed_at = time.monotonic()
    terminal_at_kill, pushed_at_kill = run.finished(), run.pushed()
    time.sleep(1.0)  # the outage clients must ride out
    # ... and start it again on the same store, port and topology
    daemon.start()
    back_at = time.monotonic()

    # Then every job reaches its terminal state within the bound, none lost, none stuck
    ledger = run.finish(RECOVERY_DEADLINE_S)
    all_terminal_at = time.monotonic()
    rejected = sum(
        1 for j in ledger.jobs.values() if j and j.get("error", {}).get("code") == "rejected"
    )
    print(
        "\n"
        + ledger.line(
            "crash recovery",
            all_terminal_at - started,
            killed_at=f"{terminal_at_kill} terminal / {pushed_at_kill} pushed",
            daemon_back_after=f"{back_at - killed_at:.1f}s",
            all_terminal_after_restart=f"{all_terminal_at - back_at:.1f}s",
            transport_errors=run.transport_errors,
            discarded_as_rejected=rejected,  # see the dead-letter test below
        )
    )
    assert pushed_at_kill < TOTAL_JOBS, "the kill should land while pushes are in progress"
    ledger.check()


async def _publish_unrecorded_discard(
    prefix: str, store: Path, job_id: str, *, reused_copy: bool = False
) -> None:
    """Publish exactly the copy `JobEngine.nack` publishes for a final failure, as if the
    daemon died after the broker confirmed it and before the store recorded the move. With
    `reused_copy`, its copy number is the one the job has now, as when a later move (a
    renewal, a lease lost with the daemon) has taken the number the lost discard had."""
    row = sqlite3.connect(store).execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
    job = from_record(orjson.loads(row[0]))
    assert job.state is JobState.ACTIVE
    report = FailureReport(code="boom", message="told to fail", retryable=False)
    discarded = lifecycle.fail(job, int(time.time() * 1000), report, lambda: 0.5)
    if reused_copy:
        discarded = replace(discarded, copy=job.copy)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(Topology(prefix).dlx_exchange, ensure=False)
        await exchange.publish(codec.encode(discarded), routing_key=job.queue, mandatory=True)


def test_a_final_nack_cut_short_by_sigkill_is_recovered_cleanly(
    daemon: Daemon,
) -> None:
    # Given a job with the default on_exhaustion (discard), fetched by worker w1
    status, _ = request(
        "POST",
        f"{daemon.url}/ojs/v1/jobs",
        {
            "type": "crash.test",
            "args": [],
            "options": {"queue": "cut", "retry": {"max_attempts": 1}},
        },
    )
    assert status == 201
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": ["cut"], "worker_id": "w1"}
    )
    job_id = body["jobs"][0]["id"]
    # When w1's final nack publishes the discarded copy and the daemon dies (SIGKILL)
    # before recording it in the store (the window between the two steps of the move rule)
    daemon.kill()
    asyncio.run(_publish_unrecorded_discard(daemon.prefix, daemon.store, job_id))
    daemon.start()
    # and w1 retries its nack, fetching the job again if the daemon gave it back
    nack = {"job_id": job_id, "worker_id": "w1", "error": {"code": "boom", "retryable": False}}
    answers = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, body = request("POST", f"{daemon.url}/ojs/v1/workers/nack", nack)
        answers.append((status, body.get("state") or body["error"]["code"]))
        if status == 200:
            break
        request(
            "POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": ["cut"], "worker_id": "w1"}
        )

    # Then the job ends discarded with w1's error, and not as a dead letter: its policy says
    # discard, and no native worker ever rejected it
    status, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{job_id}")
    job = body["job"]
    codes = [e["code"] for e in job.get("errors", [])]
    assert job["state"] == "discarded"
    assert "rejected" not in codes, f"made-up native rejection; nack answers: {answers}"
    assert job["error"]["code"] == "boom", f"errors: {codes}; nack answers: {answers}"
    assert not job.get("dead_letter", False)
    status, body = request("GET", f"{daemon.url}/ojs/v1/dead-letter?queue=cut")
    assert [j["id"] for j in body["jobs"]] == []
    # and the orphaned copy was dealt with, not left to blow up in a consumer callback
    log = daemon.log_path.read_text() if daemon.log_path else ""
    failures = [
        line
        for line in log.splitlines()
        if " ERROR " in line or line.startswith(("ojs_amqp.errors.", "Traceback"))
    ]
    assert not failures, "\n".join(failures[:6])


def test_a_lost_discard_whose_copy_number_was_reused_is_not_taken_for_a_worker_rejection(
    daemon: Daemon,
) -> None:
    # Given an active job, and a discarded copy of it on the dead-letter exchange that was
    # never recorded and carries the copy number the job has now
    push = {"type": "crash.test", "args": [], "options": {"queue": "reuse"}}
    status, _ = request("POST", f"{daemon.url}/ojs/v1/jobs", push)
    assert status == 201
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": ["reuse"], "worker_id": "w1"}
    )
    job_id = body["jobs"][0]["id"]
    asyncio.run(_publish_unrecorded_discard(daemon.prefix, daemon.store, job_id, reused_copy=True))
    # When the daemon's dead-letter consumer has taken it (the dead-letter queue is empty)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _ready(daemon, "reuse") != 0:
        time.sleep(0.1)
    assert _ready(daemon, "reuse") == 0
    time.sleep(1)  # (a rejection would be recorded within milliseconds of the delivery)
    # Then the job is still w1's, and w1's ack completes it: no made-up rejection
    status, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{job_id}")
    assert body["job"]["state"] == "active", body["job"].get("errors")
    status, body = request("POST", f"{daemon.url}/ojs/v1/workers/ack",
                           {"job_id": job_id, "worker_id": "w1", "result": {}})  # fmt: skip
    assert status == 200, body
    status, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{job_id}")
    assert body["job"]["state"] == "completed"


def _ready(daemon: Daemon, queue: str) -> int:
    """Messages ready in the queue's dead-letter queue, by a passive declare."""

    async def count() -> int:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            name = Topology(daemon.prefix).dead_letter_queue(queue)
            declared = await channel.declare_queue(name, passive=True)
            return int(declared.declaration_result.message_count)

    return asyncio.run(count())
