"""Backpressure: producers are told to slow down (429 queue_full + Retry-After), never
silently dropped, by the daemon's max_depth and by a broker length limit."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from ojs_amqp.core.ids import UUIDv7Generator
from tests.daemon import AMQP_URL, RABBITMQCTL, Daemon, request, shared_daemon

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bounded(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("bp")
    with shared_daemon(tmp, f"bp{uuid.uuid4().hex[:10]}", "--max-depth", "1000,tight=2") as d:
        yield d


def _push(daemon: Daemon, queue: str, job_id: str | None = None) -> tuple[int, Any, Any]:
    body: dict[str, Any] = {"type": "bp.test", "args": [], "queue": queue}
    if job_id:
        body["id"] = job_id
    req = urllib.request.Request(
        f"{daemon.url}/ojs/v1/jobs", data=json.dumps(body).encode(), method="POST"
    )
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def test_a_queue_at_its_max_depth_answers_429_until_a_job_finishes(bounded: Daemon) -> None:
    assert _push(bounded, "tight")[0] == 201
    assert _push(bounded, "tight")[0] == 201
    # When a third push would exceed the bound of 2 open jobs
    status, headers, body = _push(bounded, "tight")
    # Then the producer is told, with the depth and when to retry
    assert status == 429
    assert body["error"]["code"] == "queue_full" and body["error"]["retryable"] is True
    assert headers["Retry-After"] == "1"
    assert headers["X-OJS-Queue-Depth"] == "2" and headers["X-OJS-Queue-Bound"] == "2"
    # and other queues are not affected
    assert _push(bounded, "roomy")[0] == 201
    # Once a job finishes, pushes are accepted again (within the one-second count refresh)
    status, fetched = request("POST", f"{bounded.url}/ojs/v1/workers/fetch", {"queues": ["tight"]})
    job_id = fetched["jobs"][0]["id"]
    request("POST", f"{bounded.url}/ojs/v1/workers/ack", {"job_id": job_id})
    deadline = time.monotonic() + 5
    while (status := _push(bounded, "tight")[0]) == 429:
        assert time.monotonic() < deadline, "the bound never let a push through again"
        time.sleep(0.1)
    assert status == 201


def _ctl(*args: str) -> str:
    return subprocess.run(
        [*RABBITMQCTL, "-q", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_a_broker_length_limit_refuses_the_push_and_the_job_is_not_kept(bounded: Daemon) -> None:
    # Given a RabbitMQ policy limiting the job queue to one ready message
    queue = f"lim{uuid.uuid4().hex[:6]}"
    name = f"{bounded.prefix}.ojs.queue.{queue}"
    policy = f"{bounded.prefix}-limit"
    assert _push(bounded, queue)[0] == 201  # declares the queue, holds one job
    _ctl("set_policy", "--apply-to", "queues", policy, f"^{name}$", '{"max-length": 1}')
    try:
        deadline = time.monotonic() + 10
        while policy not in _ctl("list_queues", "name", "policy"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # When the broker starts nacking publishes (x-overflow=reject-publish; a quorum
        # queue enforces the limit once it is exceeded, so one more may get in)
        ids = UUIDv7Generator()
        outcomes = []
        for _ in range(4):
            job_id = ids.new(int(time.time() * 1000))
            status, headers, body = _push(bounded, queue, job_id)
            outcomes.append(status)
            if status == 429:
                break
        # Then the producer gets 429 queue_full, and the daemon did not keep the job
        assert outcomes[-1] == 429 and len(outcomes) <= 2, outcomes
        assert body["error"]["code"] == "queue_full" and headers["Retry-After"] == "1"
        assert request("GET", f"{bounded.url}/ojs/v1/jobs/{job_id}")[0] == 404
    finally:
        _ctl("clear_policy", policy)


def test_a_nack_soon_after_the_queue_was_declared_is_tried_again_before_it_counts(
    bounded: Daemon,
) -> None:
    """RabbitMQ 3.10 may nack publishes to a quorum queue that has not elected its leader
    yet, just after Declare-Ok; such a nack is not a full queue. Here a length limit stands in
    for the not-yet-elected leader and is lifted (the queue purged) while the push waits."""
    # Given a brand-new queue that refuses publishes once it holds two messages
    queue = f"new{uuid.uuid4().hex[:6]}"
    name = f"{bounded.prefix}.ojs.queue.{queue}"
    policy = f"{bounded.prefix}-new"
    _ctl("set_policy", "--apply-to", "queues", policy, f"^{name}$", '{"max-length": 1}')
    try:
        assert _push(bounded, queue)[0] == 201  # declares it
        assert _push(bounded, queue)[0] == 201  # a quorum queue lets one past the limit
        # When the next push is nacked and the queue has room again 150 ms later
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            started = time.monotonic()
            pusher = concurrent.futures.ThreadPoolExecutor(1).submit(_push, bounded, queue)
            time.sleep(0.15)
            connection.channel().queue_purge(name)
            status, _, body = pusher.result(timeout=10)
            waited = time.monotonic() - started
        finally:
            connection.close()
        # Then the daemon published again and the push was accepted, late but not refused
        assert status == 201, body
        assert waited >= 0.15
    finally:
        _ctl("clear_policy", policy)
