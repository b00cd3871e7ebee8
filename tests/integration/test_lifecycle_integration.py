"""Job lifecycle against a real RabbitMQ: retries, schedules, cancels, leases, dead letters,
priority, pending jobs and a graceful restart.

Most tests share one daemon (module scope) and keep apart by using a queue of their own; the
restart test gets a daemon of its own.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ojs_amqp.core.ids import UUIDv7Generator
from tests.daemon import Daemon, request

OJS_CONTENT_TYPE = "application/openjobspec+json"


@pytest.fixture(scope="module")
def shared(module_daemon: Daemon) -> Daemon:
    return module_daemon


@pytest.fixture
def queue() -> str:
    return f"lc-{uuid.uuid4().hex[:8]}"


def push(d: Daemon, queue: str, **options: Any) -> dict[str, Any]:
    status, body = request(
        "POST",
        f"{d.url}/ojs/v1/jobs",
        {"type": "life.test", "args": [], "options": {"queue": queue, **options}},
    )
    assert status == 201, body
    return dict(body["job"])


def fetch(d: Daemon, queue: str, count: int = 1, worker_id: str = "w1") -> list[dict[str, Any]]:
    status, body = request(
        "POST",
        f"{d.url}/ojs/v1/workers/fetch",
        {"queues": [queue], "count": count, "worker_id": worker_id},
    )
    assert status == 200, body
    return list(body["jobs"])


def fetch_until(d: Daemon, queue: str, timeout: float, worker_id: str = "w1") -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = fetch(d, queue, worker_id=worker_id)
        if jobs:
            return jobs[0]
    raise AssertionError(f"nothing became fetchable on {queue} within {timeout}s")


def buffered(d: Daemon, queue: str) -> float:
    """How many of the queue's deliveries the daemon holds for HTTP workers, not yet leased
    (its /metrics)."""
    with urllib.request.urlopen(f"{d.url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ojs_amqp_messages_unacked" and sample.labels == {
                "queue": queue, "holder": "buffered"
            }:  # fmt: skip
                return float(sample.value)
    return 0.0


def get(d: Daemon, job_id: str) -> dict[str, Any]:
    status, body = request("GET", f"{d.url}/ojs/v1/jobs/{job_id}")
    assert status == 200, body
    return dict(body["job"])


def ack(d: Daemon, job_id: str, worker_id: str = "w1") -> tuple[int, Any]:
    return request(
        "POST",
        f"{d.url}/ojs/v1/workers/ack",
        {"job_id": job_id, "worker_id": worker_id, "result": 1},
    )


def nack(d: Daemon, job_id: str, retryable: bool = True, worker_id: str = "w1") -> tuple[int, Any]:
    error = {"code": "boom", "message": "failed on purpose", "retryable": retryable}
    return request(
        "POST",
        f"{d.url}/ojs/v1/workers/nack",
        {"job_id": job_id, "worker_id": worker_id, "error": error},
    )


def test_a_nacked_job_with_retries_left_comes_back_after_its_backoff_as_attempt_two(
    shared: Daemon, queue: str
) -> None:
    # Given a fetched job with a fixed 3 s backoff
    retry = {
        "max_attempts": 3,
        "initial_interval": "PT3S",
        "backoff_coefficient": 1.0,
        "jitter": False,
    }
    job = push(shared, queue, retry=retry)
    assert fetch(shared, queue)[0]["id"] == job["id"]
    # When its worker nacks it
    status, body = nack(shared, job["id"])
    nacked_at = time.monotonic()
    assert status == 200 and body["state"] == "retryable", body
    # Then it is not fetchable during the backoff
    assert fetch(shared, queue) == []
    assert get(shared, job["id"])["state"] == "retryable"
    # and it is fetched again after it, as attempt 2
    again = fetch_until(shared, queue, timeout=10)
    waited = time.monotonic() - nacked_at
    assert again["id"] == job["id"] and again["attempt"] == 2
    assert waited >= 2.9, f"came back after {waited:.2f}s, before its 3 s backoff"
    assert ack(shared, job["id"])[0] == 200


def test_a_scheduled_job_is_not_fetchable_before_its_time_and_is_after(
    shared: Daemon, queue: str
) -> None:
    # Given a job scheduled 2 s from now
    job = push(shared, queue, delay_until="+PT2S")
    pushed_at = time.monotonic()
    assert job["state"] == "scheduled"
    # When a worker fetches straight away, then Then it gets nothing
    assert fetch(shared, queue) == []
    # and when the time has come, it gets the job
    fetched = fetch_until(shared, queue, timeout=10)
    assert fetched["id"] == job["id"]
    assert time.monotonic() - pushed_at >= 1.9


def test_a_cancelled_available_job_is_never_fetched(shared: Daemon, queue: str) -> None:
    # Given two available jobs, the first of them cancelled
    doomed, other = push(shared, queue), push(shared, queue)
    status, body = request("DELETE", f"{shared.url}/ojs/v1/jobs/{doomed['id']}")
    assert status == 200 and body["job"]["state"] == "cancelled"
    # When a worker fetches everything there is
    fetched = [j["id"] for j in fetch(shared, queue, count=10)]
    fetched += [j["id"] for j in fetch(shared, queue, count=10)]
    # Then only the other job comes out, and the cancelled one stays cancelled
    assert fetched == [other["id"]]
    assert get(shared, doomed["id"])["state"] == "cancelled"


def test_a_cancelled_scheduled_job_never_becomes_available(shared: Daemon, queue: str) -> None:
    # Given two jobs scheduled for the same moment, the first cancelled
    doomed = push(shared, queue, delay_until="+PT2S")
    witness = push(shared, queue, delay_until="+PT2S")
    status, body = request("DELETE", f"{shared.url}/ojs/v1/jobs/{doomed['id']}")
    assert status == 200 and body["job"]["state"] == "cancelled"
    # When the time comes, the witness is fetched
    assert fetch_until(shared, queue, timeout=10)["id"] == witness["id"]
    # Then the cancelled job is not, and it is still cancelled
    assert fetch(shared, queue, count=10) == []
    assert get(shared, doomed["id"])["state"] == "cancelled"


def test_a_job_whose_visibility_timeout_lapses_returns_to_available_and_is_fetched_again(
    shared: Daemon, queue: str
) -> None:
    # Given a job with a 1 s visibility timeout, fetched by w1, who never heartbeats
    job = push(shared, queue, visibility_timeout_ms=1000)
    assert fetch(shared, queue, worker_id="w1")[0]["id"] == job["id"]
    # When the lease lapses
    deadline = time.monotonic() + 5
    while get(shared, job["id"])["state"] == "active":
        assert time.monotonic() < deadline, "the lease never lapsed"
        time.sleep(0.1)
    # Then the job is available again and w2 fetches it as attempt 2
    again = fetch_until(shared, queue, timeout=5, worker_id="w2")
    assert again["id"] == job["id"] and again["attempt"] == 2
    # and the late w1 can no longer ack it, while w2 can
    assert ack(shared, job["id"], worker_id="w1")[0] == 409
    status, body = ack(shared, job["id"], worker_id="w2")
    assert status == 200 and body["state"] == "completed"


def test_heartbeats_keep_a_job_active_past_its_visibility_timeout(
    shared: Daemon, queue: str
) -> None:
    # Given a job with a 1 s visibility timeout, fetched by w1
    job = push(shared, queue, visibility_timeout_ms=1000)
    assert fetch(shared, queue)[0]["id"] == job["id"]
    stop = threading.Event()
    extended: list[list[str]] = []

    def beat() -> None:
        while not stop.wait(0.25):
            status, body = request(
                "POST",
                f"{shared.url}/ojs/v1/workers/heartbeat",
                {"worker_id": "w1", "active_jobs": [job["id"]]},
            )
            extended.append(body.get("jobs_extended", []) if status == 200 else [])

    # When w1 heartbeats every 250 ms for three times the visibility timeout
    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        time.sleep(2.0)
        # Then no other worker gets the job meanwhile, and it stays active on attempt 1
        assert fetch(shared, queue, worker_id="w2") == []
        current = get(shared, job["id"])
        assert current["state"] == "active" and current["attempt"] == 1
    finally:
        stop.set()
        beater.join(5)
    assert extended and all(ids == [job["id"]] for ids in extended)
    status, body = ack(shared, job["id"])
    assert status == 200 and body["state"] == "completed"


def test_an_exhausted_dead_letter_job_is_listed_and_a_retry_makes_it_fetchable(
    shared: Daemon, queue: str
) -> None:
    # Given a job that dead-letters on exhaustion and has a single attempt
    job = push(shared, queue, retry={"max_attempts": 1, "on_exhaustion": "dead_letter"})
    assert fetch(shared, queue)[0]["id"] == job["id"]
    # When its one attempt fails
    status, body = nack(shared, job["id"])
    assert status == 200 and body["state"] == "discarded", body
    # Then it shows up in the dead-letter list
    status, body = request("GET", f"{shared.url}/ojs/v1/dead-letter?queue={queue}")
    assert status == 200 and [j["id"] for j in body["jobs"]] == [job["id"]]
    # and a retry from there makes it fetchable again
    status, body = request("POST", f"{shared.url}/ojs/v1/dead-letter/{job['id']}/retry")
    assert status == 200 and body["job"]["state"] == "available", body
    again = fetch_until(shared, queue, timeout=5)
    assert again["id"] == job["id"] and again["state"] == "active"
    assert ack(shared, job["id"])[0] == 200
    status, body = request("GET", f"{shared.url}/ojs/v1/dead-letter?queue={queue}")
    assert body["jobs"] == []


def test_within_a_queue_buffered_jobs_are_fetched_highest_priority_first(
    shared: Daemon, queue: str
) -> None:
    # Given the queue consumed for HTTP workers (its first fetch starts the consumer)
    assert fetch(shared, queue) == []
    # and jobs of mixed priority, all delivered to the daemon's buffer
    priorities = [0, 5, -3, 10, 1]
    ids = {push(shared, queue, priority=p)["id"]: p for p in priorities}
    deadline = time.monotonic() + 10
    while buffered(shared, queue) < len(priorities):
        assert time.monotonic() < deadline, "the pushed jobs never reached the daemon's buffer"
        time.sleep(0.02)
    # When a worker fetches them one at a time
    order = [fetch(shared, queue)[0]["id"] for _ in priorities]
    # Then they come out highest priority first
    assert [ids[i] for i in order] == sorted(priorities, reverse=True)
    for job_id in order:
        assert ack(shared, job_id)[0] == 200


def test_a_pending_job_is_not_fetchable_until_activated(shared: Daemon, queue: str) -> None:
    # Given a job pushed as pending
    job = push(shared, queue, pending=True)
    assert job["state"] == "pending"
    # Then no worker gets it
    assert fetch(shared, queue) == []
    # When it is activated, then it is fetchable
    status, body = request("POST", f"{shared.url}/ojs/v1/jobs/{job['id']}/activate")
    assert status == 200 and body["job"]["state"] == "available", body
    assert fetch_until(shared, queue, timeout=5)["id"] == job["id"]
    assert ack(shared, job["id"])[0] == 200


def test_concurrent_final_nacks_are_all_honoured_and_none_becomes_a_dead_letter(
    shared: Daemon, queue: str
) -> None:
    # Given 300 single-attempt jobs whose policy discards (no dead letter) on failure
    ids = {push(shared, queue, retry={"max_attempts": 1})["id"] for _ in range(300)}
    answers: Counter[int] = Counter()
    lock = threading.Lock()

    def worker(name: str) -> None:
        while jobs := fetch(shared, queue, count=10, worker_id=name):
            for job in jobs:
                status, _ = nack(shared, job["id"], retryable=False, worker_id=name)
                with lock:
                    answers[status] += 1

    # When four workers fetch and nack them concurrently
    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then every nack of a job the worker holds is accepted
    assert answers == Counter({200: len(ids)}), f"nack answers: {dict(answers)}"
    # and each job is discarded with its worker's error, and none is a dead letter
    errors = Counter((j["state"], j["error"]["code"]) for j in (get(shared, i) for i in ids))
    assert errors == Counter({("discarded", "boom"): len(ids)}), dict(errors)
    status, body = request("GET", f"{shared.url}/ojs/v1/dead-letter?queue={queue}")
    assert status == 200 and body["pagination"]["total"] == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/ojs/v1/jobs/not-a-uuid"),
        ("DELETE", "/ojs/v1/jobs/not-a-uuid"),
        ("POST", "/ojs/v1/jobs/not-a-uuid/activate"),
        ("GET", "/ojs/v1/jobs/%00%ff"),
        ("GET", "/ojs/v1/jobs/" + "9" * 300),
        ("GET", "/ojs/v1/jobs/{unknown}"),
        ("POST", "/ojs/v1/dead-letter/not-a-uuid/retry"),
        ("DELETE", "/ojs/v1/dead-letter/{unknown}"),
        ("GET", "/ojs/v1/no-such-endpoint"),
    ],
)
def test_unknown_or_malformed_ids_in_paths_answer_404_with_an_ojs_error(
    shared: Daemon, method: str, path: str
) -> None:
    unknown = UUIDv7Generator().new(int(time.time() * 1000))
    req = urllib.request.Request(shared.url + path.replace("{unknown}", unknown), method=method)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=10)
    err = caught.value
    body = json.loads(err.read())
    assert err.code == 404
    assert err.headers["Content-Type"] == OJS_CONTENT_TYPE
    assert body["error"]["code"] == "not_found" and isinstance(body["error"]["message"], str)


def test_a_scheduled_job_survives_a_graceful_restart_and_still_fires(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    # Given a job scheduled 4 s from now
    daemon = make_daemon()
    job = push(daemon, "restart", delay_until="+PT4S")
    pushed_at = time.monotonic()
    # When the daemon is stopped (SIGTERM) and started again
    daemon.stop()
    daemon.start()
    assert get(daemon, job["id"])["state"] == "scheduled"
    # Then the job still fires, and not before its time
    fetched = fetch_until(daemon, "restart", timeout=20)
    assert fetched["id"] == job["id"]
    assert time.monotonic() - pushed_at >= 3.9
    assert ack(daemon, job["id"])[0] == 200
