"""A worker that vanishes with a job spends one of its attempts (ojs-retry §9.2): a job that
crashes every worker that takes it ends per `on_exhaustion` after `max_attempts`, instead of
being handed out for ever. HTTP workers (visibility and execution timeouts, and a lease found
after a daemon restart) and native SDK workers killed with SIGKILL, on the real broker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiormq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ojs_amqp.amqp.topology import Topology
from ojs_amqp.sdk import JobContext, Worker
from ojs_amqp.sdk.worker import WorkerStats
from tests.daemon import Daemon, request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared(module_daemon: Daemon) -> Daemon:
    return module_daemon


@pytest.fixture
def queue() -> str:
    return f"lost-{uuid.uuid4().hex[:8]}"


def push(d: Daemon, queue: str, job_type: str = "lost.test", **options: Any) -> str:
    body = {"type": job_type, "args": options.pop("args", []), "options": {"queue": queue,
            **options}}  # fmt: skip
    status, answer = request("POST", f"{d.url}/ojs/v1/jobs", body)
    assert status == 201, answer
    return str(answer["job"]["id"])


def fetch(d: Daemon, queue: str, worker_id: str = "w") -> list[dict[str, Any]]:
    status, body = request(
        "POST", f"{d.url}/ojs/v1/workers/fetch", {"queues": [queue], "worker_id": worker_id}
    )
    assert status == 200, body
    return list(body["jobs"])


def get(d: Daemon, job_id: str) -> dict[str, Any]:
    status, body = request("GET", f"{d.url}/ojs/v1/jobs/{job_id}")
    assert status == 200, body
    return dict(body["job"])


def dead_letter_ids(d: Daemon, queue: str) -> list[str]:
    status, body = request("GET", f"{d.url}/ojs/v1/dead-letter?queue={queue}")
    assert status == 200, body
    return [job["id"] for job in body["jobs"]]


def fetch_and_abandon(d: Daemon, queue: str, job_id: str, within: float) -> list[int]:
    """Fetch the job every time it is handed out and never ack it, until it is finished;
    the attempt numbers it was fetched as."""
    fetched: list[int] = []
    deadline = time.monotonic() + within
    while get(d, job_id)["state"] not in ("discarded", "completed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {get(d, job_id)} after {fetched}"
        for job in fetch(d, queue, worker_id=f"w{len(fetched)}"):
            assert job["id"] == job_id
            fetched.append(job["attempt"])
    assert fetch(d, queue) == []  # nothing is handed out after the end
    return fetched


def wait_for(d: Daemon, job_id: str, states: set[str], within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while (job := get(d, job_id))["state"] not in states:
        assert time.monotonic() < deadline, f"job never reached {states}: {job}"
        time.sleep(0.1)
    return job


# --- HTTP workers ---------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [1, 2, 3])
def test_a_job_never_acked_is_fetched_max_attempts_times_then_discarded(
    shared: Daemon, queue: str, attempts: int
) -> None:
    # Given a job with `attempts` attempts and a 1 s visibility timeout
    job_id = push(shared, queue, visibility_timeout_ms=1000, retry={"max_attempts": attempts})
    # When every worker that fetches it vanishes without an ack or a heartbeat
    fetched = fetch_and_abandon(shared, queue, job_id, within=5 + 3 * attempts)
    # Then it was handed out exactly `attempts` times, and is discarded (the default
    # on_exhaustion: not a dead letter) with one visibility_timeout error per attempt
    assert fetched == list(range(1, attempts + 1))
    job = get(shared, job_id)
    assert (job["state"], job["attempt"]) == ("discarded", attempts)
    assert [(e["code"], e["attempt"]) for e in job["errors"]] == [
        ("visibility_timeout", n) for n in range(1, attempts + 1)
    ]
    assert job["error"]["code"] == "visibility_timeout" and "discarded_at" in job
    assert job_id not in dead_letter_ids(shared, queue)


def test_a_job_never_acked_under_a_dead_letter_policy_ends_a_dead_letter(
    shared: Daemon, queue: str
) -> None:
    job_id = push(
        shared, queue, visibility_timeout_ms=1000,
        retry={"max_attempts": 2, "on_exhaustion": "dead_letter"},
    )  # fmt: skip
    assert fetch_and_abandon(shared, queue, job_id, within=10) == [1, 2]
    job = get(shared, job_id)
    assert job["state"] == "discarded"
    assert [e["code"] for e in job["errors"]] == ["visibility_timeout"] * 2
    assert dead_letter_ids(shared, queue) == [job_id]


def test_a_job_that_runs_past_its_execution_timeout_each_time_ends_per_on_exhaustion(
    shared: Daemon, queue: str
) -> None:
    # Given a job with a 1 s execution timeout (its lease is longer) and two attempts
    job_id = push(
        shared, queue, timeout_ms=1000, visibility_timeout_ms=30_000,
        retry={"max_attempts": 2, "initial_interval_ms": 100, "jitter": False,
               "on_exhaustion": "dead_letter"},
    )  # fmt: skip
    # When each worker that fetches it neither acks nor fails it
    fetched = fetch_and_abandon(shared, queue, job_id, within=10)
    # Then it ran twice, waited out its backoff in between, and is a dead letter with two
    # timeout errors
    assert fetched == [1, 2]
    job = get(shared, job_id)
    assert job["state"] == "discarded"
    assert [(e["code"], e["attempt"]) for e in job["errors"]] == [("timeout", 1), ("timeout", 2)]
    assert dead_letter_ids(shared, queue) == [job_id]


def test_a_lease_found_after_a_restart_on_the_last_attempt_ends_per_on_exhaustion(
    make_daemon: Callable[..., Daemon], queue: str
) -> None:
    # Given a job on its only attempt, fetched by a worker that holds it (long lease)
    daemon = make_daemon()
    job_id = push(
        daemon, queue, visibility_timeout_ms=60_000,
        retry={"max_attempts": 1, "on_exhaustion": "dead_letter"},
    )  # fmt: skip
    assert [j["id"] for j in fetch(daemon, queue)] == [job_id]
    # When the daemon dies (SIGKILL: the lease is lost with it) and starts again
    daemon.kill()
    daemon.start()
    # Then the job's delivery, back from the broker, is a visibility timeout: its one attempt
    # is spent, so it is a dead letter and is not handed out again
    deadline = time.monotonic() + 10
    while get(daemon, job_id)["state"] == "active":
        assert time.monotonic() < deadline, "the lost lease was never noticed"
        assert fetch(daemon, queue) == []
    job = get(daemon, job_id)
    assert job["state"] == "discarded" and job["error"]["code"] == "visibility_timeout"
    assert dead_letter_ids(daemon, queue) == [job_id]
    assert fetch(daemon, queue) == []


def test_a_handed_over_lease_whose_daemon_died_ends_per_on_exhaustion_when_its_timer_fires(
    make_daemon: Callable[..., Daemon], queue: str
) -> None:
    # Given a lease held longer than --delivery-hold-ms, so a timer on the delay ladder
    # stands for it, on a job's last attempt
    daemon = make_daemon("--delivery-hold-ms", "1000")
    job_id = push(daemon, queue, visibility_timeout_ms=4000, retry={"max_attempts": 1})
    assert [j["id"] for j in fetch(daemon, queue)] == [job_id]
    time.sleep(1.8)  # the hand-over happens at ~1 s
    # When the daemon dies and starts again, and nobody fetches from the queue
    daemon.kill()
    daemon.start()
    # Then the timer, at the lease deadline, discards the job (its one attempt is spent)
    job = wait_for(daemon, job_id, {"discarded", "available"}, within=15)
    assert job["state"] == "discarded", job
    assert [e["code"] for e in job["errors"]] == ["visibility_timeout"]
    assert dead_letter_ids(daemon, queue) == []


# --- native SDK workers -----------------------------------------------------------------------


def _worker(d: Daemon, queue: str, *flags: str) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "ojs_amqp", "worker", "tests.integration.lost_handlers:worker",
        "--queue", queue, "--prefix", d.prefix, "--amqp-url", d.amqp_url,
        "--concurrency", "1", *flags,
    ]  # fmt: skip
    return subprocess.Popen(
        args, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def _metric(d: Daemon, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{d.url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def _runs(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _kill_while_running(d: Daemon, queue: str, runs: Path, flags: tuple[str, ...]) -> None:
    """Start a worker, wait until it runs the job once more, then SIGKILL it."""
    before = len(_runs(runs))
    proc = _worker(d, queue, *flags)
    try:
        deadline = time.monotonic() + 30
        while len(_runs(runs)) == before:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.communicate()[0].decode()
                raise AssertionError(f"the worker never ran the job; its output:\n{out}")
            time.sleep(0.05)
        time.sleep(0.7)  # past the first heartbeat, when the worker sends one
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)


@pytest.mark.parametrize(
    ("policy", "flags"),
    [
        ({"max_attempts": 2}, ("--heartbeat-interval", "60")),
        ({"max_attempts": 3, "on_exhaustion": "dead_letter"}, ("--heartbeat-interval", "0.3")),
    ],
    ids=["discard-no-heartbeat", "dead-letter-heartbeats"],
)
def test_a_job_that_kills_its_native_worker_each_time_ends_per_on_exhaustion(
    shared: Daemon, queue: str, tmp_path: Path, policy: dict[str, Any], flags: tuple[str, ...]
) -> None:
    # Given a job whose handler never returns, and max_attempts N
    runs = tmp_path / "runs"
    attempts = policy["max_attempts"]
    job_id = push(shared, queue, "lost.hang", args=[str(runs)], retry=policy)
    # When N native workers in a row are killed (SIGKILL) while they run it
    for _ in range(attempts):
        _kill_while_running(shared, queue, runs, flags)
    # and one more worker starts
    proc = _worker(shared, queue, *flags)
    try:
        # Then that worker does not run it again: the broker's delivery count says all N
        # attempts died with their workers, and the job ends per on_exhaustion
        job = wait_for(shared, job_id, {"discarded", "completed"}, within=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    # (it ran exactly N times, as attempts 1..N, each lost attempt in its history)
    assert _runs(runs) == [str(n) for n in range(1, attempts + 1)], out
    assert job["state"] == "discarded" and job["attempt"] == attempts, job
    assert [(e["code"], e["attempt"]) for e in job["errors"]] == [
        ("worker_lost", n) for n in range(1, attempts + 1)
    ]
    assert job["error"]["details"]["delivery_count"] == attempts
    dead = policy.get("on_exhaustion") == "dead_letter"
    assert (job_id in dead_letter_ids(shared, queue)) is dead
    assert "worker_lost" in out
    # and every lost attempt is counted for operators
    assert _metric(shared, "ojs_lease_expired_total", queue=queue, kind="worker_lost") == attempts


def test_jobs_only_prefetched_by_the_workers_a_job_kills_still_run(
    shared: Daemon, queue: str, tmp_path: Path
) -> None:
    # Given a job that kills its worker, queued ahead of two good jobs, all with two attempts:
    # a worker (concurrency 1, prefetch 3) holds the good ones unstarted while it runs the
    # bad one, so each kill sends them back to the queue too (x-delivery-count counts them)
    runs = tmp_path / "runs"
    retry = {"max_attempts": 2}
    bad = push(shared, queue, "lost.hang", args=[str(runs)], retry=retry)
    good = [push(shared, queue, "lost.ok", retry=retry) for _ in range(2)]
    flags = ("--heartbeat-interval", "60")
    # When two workers in a row are killed while they run the bad job
    for _ in range(2):
        _kill_while_running(shared, queue, runs, flags)
    proc = _worker(shared, queue, *flags)
    try:
        finished = [wait_for(shared, job_id, {"completed", "discarded"}, 30) for job_id in good]
        lost = wait_for(shared, bad, {"discarded", "completed"}, within=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    # Then the bad job ends discarded after its two runs, while the good ones, which came back
    # as often but were never started, still run and complete (a lost attempt may be charged
    # to them, never their last)
    assert lost["state"] == "discarded" and len(_runs(runs)) == 2, out
    assert [job["state"] for job in finished] == ["completed", "completed"], (finished, out)
    assert all(job["attempt"] <= 2 for job in finished)
    # (they did come back: the charge is recorded with the delivery count that caused it)
    for job in finished:
        charged = [e for e in job.get("errors", []) if e["code"] == "worker_lost"]
        assert len(charged) == 1 and charged[0]["details"]["delivery_count"] >= 1, job


def test_without_the_daemon_a_worker_judges_a_redelivered_job_by_its_delivery_count(
    make_daemon: Callable[..., Daemon], queue: str
) -> None:
    # Given a job with one attempt whose copy already went back to its queue once (a worker
    # took it and its channel closed), while the daemon is down
    daemon = make_daemon()
    job_id = push(daemon, queue, "lost.ok", retry={"max_attempts": 1})
    daemon.stop()
    asyncio.run(_take_and_drop(daemon, queue))
    # When an SDK worker gets it, and its question to the daemon goes unanswered
    ran: list[int] = []
    stats = asyncio.run(_work_briefly(daemon, queue, ran))
    # Then it does not run the job: by the delivery count its one attempt is spent; it
    # reports the job failed (worker_lost), and the daemon, back, applies on_exhaustion
    assert ran == [] and stats.worker_lost == 1 and stats.failed == 1
    daemon.start()
    job = wait_for(daemon, job_id, {"discarded", "completed"}, within=15)
    assert job["state"] == "discarded" and job["error"]["code"] == "worker_lost", job
    assert job["error"]["details"] == {"delivery_count": 1, "max_attempts": 1}


async def _take_and_drop(d: Daemon, queue: str) -> None:
    """Consume one delivery of the queue and close the channel without settling it."""
    connection = await aiormq.connect(d.amqp_url)
    try:
        channel = await connection.channel()
        got = asyncio.get_running_loop().create_future()
        await channel.basic_qos(prefetch_count=1)
        await channel.basic_consume(
            Topology(d.prefix).job_queue(queue), lambda m: _first(got, m), no_ack=False
        )
        async with asyncio.timeout(10):
            await got
        await channel.close()
    finally:
        await connection.close()


async def _first(got: asyncio.Future[Any], message: Any) -> None:
    if not got.done():
        got.set_result(message)


async def _work_briefly(d: Daemon, queue: str, ran: list[int]) -> WorkerStats:
    async def ok(ctx: JobContext) -> None:
        ran.append(ctx.attempt)

    worker = Worker(
        d.amqp_url, prefix=d.prefix, queues=[queue], handlers={"lost.ok": ok},
        publish_timeout=1.0,
    )  # fmt: skip
    task = asyncio.create_task(worker.run(handle_signals=False))
    try:
        async with asyncio.timeout(15):
            while worker.stats.failed == 0:
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
    finally:
        await worker.stop(grace_period=1.0)
        await task
    return worker.stats


def test_a_single_attempt_job_that_kills_its_worker_at_once_runs_at_most_twice(
    shared: Daemon, queue: str, tmp_path: Path
) -> None:
    # Given a job with one attempt that kills its worker before its first heartbeat: the
    # daemon cannot tell that first run from a delivery only prefetched, and never charges a
    # job's last attempt on a guess (docs/sdk.md, "Jobs that kill their worker")
    runs = tmp_path / "runs"
    job_id = push(shared, queue, "lost.hang", args=[str(runs)], retry={"max_attempts": 1})
    flags = ("--heartbeat-interval", "60")
    # When the first worker is killed, and the second one, both while they run it
    for _ in range(2):
        _kill_while_running(shared, queue, runs, flags)
    proc = _worker(shared, queue, *flags)
    try:
        job = wait_for(shared, job_id, {"discarded", "completed"}, within=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    # Then it ran twice (as attempt 1: the first run was not counted), and the third worker
    # found the second run lost: discarded, not run a third time
    assert _runs(runs) == ["1", "1"], out
    assert job["state"] == "discarded" and job["attempt"] == 1, job
    assert [e["code"] for e in job["errors"]] == ["worker_lost"]
