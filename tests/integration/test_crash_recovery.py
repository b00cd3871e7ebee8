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
import http.client
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from ojs_amqp.amqp import codec
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.core import lifecycle
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.job import JobState, from_record
from ojs_amqp.core.retry import FailureReport
from tests.daemon import AMQP_URL, Daemon, request

TOTAL_JOBS = 500
FAIL_EVERY = 5  # every 5th job fails: 20%
WORKERS = 4
FETCH_COUNT = 10
KILL_AT_TERMINAL = int(TOTAL_JOBS * 0.4)
PUSH_INTERVAL_S = 0.008  # paces the producer so the kill lands while pushes are in flight
WORK_S = 0.005  # "executing" a job, so workers hold leases when the daemon dies
VISIBILITY_TIMEOUT_MS = 3000
RECOVERY_DEADLINE_S = 90.0
QUEUE = "crash"
TERMINAL = {"completed", "discarded", "cancelled"}
TRANSPORT_ERRORS = (OSError, http.client.HTTPException, ValueError)


@dataclass
class Run:
    """What producer and workers observed, shared between the threads."""

    url: str
    outcomes: dict[str, str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    accepted: set[str] = field(default_factory=set)
    push_attempts: Counter[str] = field(default_factory=Counter)
    fetches: Counter[str] = field(default_factory=Counter)
    reported: dict[str, str] = field(default_factory=dict)  # id -> state the daemon confirmed
    refused_settles: int = 0  # 409 on ack/nack: the lease was lost in the crash
    transport_errors: int = 0

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any] | None:
        """One request; None when the daemon is unreachable (the outage)."""
        try:
            return request(method, self.url + path, body, timeout=5.0)
        except TRANSPORT_ERRORS:
            with self.lock:
                self.transport_errors += 1
            return None

    def terminal_reported(self) -> int:
        with self.lock:
            return len(self.reported)

    def pushed(self) -> int:
        with self.lock:
            return len(self.accepted)


def job_body(job_id: str, outcome: str) -> dict[str, Any]:
    options: dict[str, Any] = {"queue": QUEUE, "visibility_timeout_ms": VISIBILITY_TIMEOUT_MS}
    if outcome == "fail":
        options["retry"] = {"max_attempts": 1}
    return {"id": job_id, "type": "crash.test", "args": [{"outcome": outcome}], "options": options}


def produce(run: Run) -> None:
    """Push every job; retry the same id until 201, or 409 duplicate (accepted earlier)."""
    for job_id, outcome in run.outcomes.items():
        while not run.stop.is_set():
            with run.lock:
                run.push_attempts[job_id] += 1
            answer = run.call("POST", "/ojs/v1/jobs", job_body(job_id, outcome))
            if answer is not None:
                status, body = answer
                if status == 201 or (status == 409 and body["error"]["code"] == "duplicate"):
                    with run.lock:
                        run.accepted.add(job_id)
                    break
                assert status >= 500, f"push of {job_id} refused: {status} {body}"
            time.sleep(0.05)
        time.sleep(PUSH_INTERVAL_S)


def settle(run: Run, worker_id: str, job: dict[str, Any]) -> None:
    """Ack or nack as the job's args say; retry through the outage until the daemon answers."""
    outcome = job["args"][0]["outcome"]
    if outcome == "ack":
        path, body = "/ojs/v1/workers/ack", {"job_id": job["id"], "result": {"ok": True}}
    else:
        error = {"code": "boom", "message": "told to fail", "retryable": False}
        path, body = "/ojs/v1/workers/nack", {"job_id": job["id"], "error": error}
    body["worker_id"] = worker_id
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not run.stop.is_set():
        answer = run.call("POST", path, body)
        if answer is None or answer[0] >= 500:
            time.sleep(0.1)
            continue
        status, reply = answer
        with run.lock:
            if status == 200:
                run.reported[job["id"]] = reply["state"]
            elif status == 409:
                run.refused_settles += 1  # someone else holds it now; it will be re-run
            else:
                raise AssertionError(f"{path} for {job['id']} answered {status} {reply}")
        return


def work(run: Run, worker_id: str) -> None:
    while not run.stop.is_set():
        answer = run.call(
            "POST",
            "/ojs/v1/workers/fetch",
            {"queues": [QUEUE], "count": FETCH_COUNT, "worker_id": worker_id},
        )
        if answer is None or answer[0] >= 500:
            time.sleep(0.1)
            continue
        status, body = answer
        assert status == 200, f"fetch answered {status} {body}"
        for job in body["jobs"]:
            with run.lock:
                run.fetches[job["id"]] += 1
            time.sleep(WORK_S)
            settle(run, worker_id, job)


def read_jobs(url: str, ids: list[str]) -> dict[str, dict[str, Any] | None]:
    """GET every id; None for a job the daemon does not know (lost)."""
    jobs: dict[str, dict[str, Any] | None] = {}
    for job_id in ids:
        status, body = request("GET", f"{url}/ojs/v1/jobs/{job_id}", timeout=10.0)
        assert status in (200, 404), f"GET {job_id} answered {status} {body}"
        jobs[job_id] = body["job"] if status == 200 else None
    return jobs


def state_of(job: dict[str, Any] | None) -> str | None:
    return None if job is None else str(job["state"])


def wait_until_all_terminal(url: str, ids: list[str], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        jobs = read_jobs(url, pending)
        pending = [i for i in pending if state_of(jobs[i]) not in TERMINAL]
        time.sleep(0.25)


def test_sigkill_mid_run_loses_no_job_and_leaves_none_stuck(daemon: Daemon) -> None:
    # Given 500 jobs with client-chosen UUIDv7 ids, 20% of them told to fail for good
    ids_gen = UUIDv7Generator()
    outcomes: dict[str, str] = {}
    for n in range(TOTAL_JOBS):
        job_id = ids_gen.new(int(time.time() * 1000))
        outcomes[job_id] = "fail" if n % FAIL_EVERY == 0 else "ack"
    ids = list(outcomes)
    run = Run(url=daemon.url, outcomes=outcomes)
    threads = [threading.Thread(target=produce, args=(run,), name="producer", daemon=True)]
    threads += [
        threading.Thread(target=work, args=(run, f"w{n}"), name=f"worker-{n}", daemon=True)
        for n in range(WORKERS)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()

    # When ~40% of the jobs are finished and pushes are still going on, SIGKILL the daemon
    while run.terminal_reported() < KILL_AT_TERMINAL:
        assert time.monotonic() - started < 30, "the workers never got to 40% of the jobs"
        assert all(t.is_alive() for t in threads), "a client thread died before the crash"
        time.sleep(0.01)
    daemon.kill()
    killed_at = time.monotonic()
    terminal_at_kill, pushed_at_kill = run.terminal_reported(), run.pushed()
    time.sleep(1.0)
    # ... and start it again on the same store, port and topology
    daemon.start()
    back_at = time.monotonic()

    # Then every job reaches a terminal state within the bound
    wait_until_all_terminal(daemon.url, ids, RECOVERY_DEADLINE_S)
    all_terminal_at = time.monotonic()
    producer = threads[0]
    producer.join(30)
    run.stop.set()
    for thread in threads[1:]:
        thread.join(15)
    jobs = read_jobs(daemon.url, ids)  # with every client quiet
    states = {i: state_of(job) for i, job in jobs.items()}

    duplicates = {i: n for i, n in run.fetches.items() if n > 1}
    rejected = sum(1 for j in jobs.values() if j and j.get("error", {}).get("code") == "rejected")
    push_retries = sum(n - 1 for n in run.push_attempts.values())
    print(
        f"\ncrash recovery: {TOTAL_JOBS} jobs, killed at {terminal_at_kill} terminal / "
        f"{pushed_at_kill} pushed; daemon back after {back_at - killed_at:.1f}s; "
        f"all terminal {all_terminal_at - back_at:.1f}s after restart "
        f"({all_terminal_at - started:.1f}s total); duplicate executions: {len(duplicates)} "
        f"jobs ({sum(duplicates.values()) - len(duplicates)} extra runs); push retries: "
        f"{push_retries}; refused acks/nacks: {run.refused_settles}; transport errors: "
        f"{run.transport_errors}; discarded as 'rejected' (see the dead-letter test below): "
        f"{rejected}"
    )

    assert not producer.is_alive(), "the producer never got every push accepted"
    assert pushed_at_kill < TOTAL_JOBS, "the kill should land while pushes are in progress"
    assert run.accepted == set(ids)
    lost = [i for i, s in states.items() if s is None]
    assert not lost, f"{len(lost)} accepted jobs are gone after the crash: {lost[:5]}"
    stuck = Counter(s for s in states.values() if s not in TERMINAL)
    assert not stuck, f"jobs stuck after {RECOVERY_DEADLINE_S}s: {dict(stuck)}"
    expected = {i: "completed" if o == "ack" else "discarded" for i, o in outcomes.items()}
    wrong = {i: (states[i], want) for i, want in expected.items() if states[i] != want}
    assert not wrong, f"{len(wrong)} jobs in the wrong state (got, want): {list(wrong.items())[:5]}"
    # and whatever a worker was told agrees with what the daemon reads back
    told = {i: (st, expected[i]) for i, st in run.reported.items() if st != expected[i]}
    assert not told, f"workers were told states that differ from the outcome: {told}"
    assert all(run.fetches[i] >= 1 for i in ids), "a job finished without being fetched"


async def _publish_unrecorded_discard(prefix: str, store: Path, job_id: str) -> None:
    """Publish exactly the copy `JobEngine.nack` publishes for a final failure, as if the
    daemon died after the broker confirmed it and before the store recorded the move."""
    row = sqlite3.connect(store).execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
    job = from_record(orjson.loads(row[0]))
    assert job.state is JobState.ACTIVE
    report = FailureReport(code="boom", message="told to fail", retryable=False)
    discarded = lifecycle.fail(job, int(time.time() * 1000), report, lambda: 0.5)
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
