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

from ojs_amqp.amqp.topology import Topology
from ojs_amqp.core.ids import UUIDv7Generator
from tests.daemon import AMQP_URL, RABBITMQCTL, Daemon, request, shared_daemon

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bounded(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("bp")
    bounds = "1000,tight=2,fullw=1,fullr=1"
    with shared_daemon(tmp, f"bp{uuid.uuid4().hex[:10]}", "--max-depth", bounds) as d:
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
            pusher = concurrent.futures.ThreadPoolExecutor(1).submit(_push, bounded, queue)
            time.sleep(0.15)
            waiting = not pusher.done()  # still publishing again, not yet answered
            connection.channel().queue_purge(name)
            status, _, body = pusher.result(timeout=10)
        finally:
            connection.close()
        # Then the daemon published again and the push was accepted, late but not refused
        assert waiting, f"the push was answered before the queue had room: {pusher.result()}"
        assert status == 201, body
    finally:
        _ctl("clear_policy", policy)


def _submit(daemon: Daemon, envelope: dict[str, Any], reply: bool) -> dict[str, Any] | None:
    """Publish a submission to ojs.exchange.submit; with `reply`, wait for the answer on
    direct reply-to."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        answers: list[bytes] = []
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        if reply:
            channel.basic_consume(
                "amq.rabbitmq.reply-to", lambda _c, _m, _p, body: answers.append(body), True
            )
            props.reply_to, props.correlation_id = "amq.rabbitmq.reply-to", "bp-1"
        channel.confirm_delivery()
        exchange = Topology(daemon.prefix).submit_exchange
        channel.basic_publish(exchange, "", json.dumps(envelope).encode(), props)
        if not reply:
            return None
        deadline = time.monotonic() + 10
        while not answers:
            assert time.monotonic() < deadline, "no answer to the submission"
            connection.process_data_events(time_limit=0.2)
        return dict(json.loads(answers[0]))
    finally:
        connection.close()


def _fill(daemon: Daemon, queue: str) -> str:
    """Push the one job `queue`'s bound allows; return its id."""
    status, _, body = _push(daemon, queue)
    assert status == 201, body
    return str(body["job"]["id"])


def test_an_amqp_submission_to_a_full_queue_with_reply_to_is_answered_queue_full(
    bounded: Daemon,
) -> None:
    # Given a queue at its bound of one open job
    _fill(bounded, "fullr")
    job_id = UUIDv7Generator().new(int(time.time() * 1000))
    # When a submission that asks for a reply would exceed it
    answer = _submit(bounded, {"id": job_id, "type": "bp.amqp", "args": [], "queue": "fullr"}, True)
    # Then it is told, and the job is not kept
    assert answer is not None and answer["error"]["code"] == "queue_full", answer
    assert request("GET", f"{bounded.url}/ojs/v1/jobs/{job_id}")[0] == 404


def test_an_amqp_submission_to_a_full_queue_waits_in_ojs_submit_until_there_is_room(
    bounded: Daemon,
) -> None:
    # Given a queue at its bound of one open job
    first = _fill(bounded, "fullw")
    job_id = UUIDv7Generator().new(int(time.time() * 1000))
    assert bounded.log_path is not None
    hand_back = "returning a message to try again later: "
    before = bounded.log_path.read_text().count(hand_back)
    # When a submission without reply_to would exceed it
    _submit(bounded, {"id": job_id, "type": "bp.amqp", "args": [], "queue": "fullw"}, False)
    # Then it is not taken while the queue is full (handed back to ojs.submit, tried again)
    deadline = time.monotonic() + 10
    while bounded.log_path.read_text().count(hand_back) == before:
        assert time.monotonic() < deadline, "the daemon never handed the submission back"
        time.sleep(0.1)
    assert request("GET", f"{bounded.url}/ojs/v1/jobs/{job_id}")[0] == 404
    # and once a job finishes and makes room, it is taken, once
    fetched = request("POST", f"{bounded.url}/ojs/v1/workers/fetch", {"queues": ["fullw"]})[1]
    assert [j["id"] for j in fetched["jobs"]] == [first]
    assert request("POST", f"{bounded.url}/ojs/v1/workers/ack", {"job_id": first})[0] == 200
    deadline = time.monotonic() + 15
    while (status := request("GET", f"{bounded.url}/ojs/v1/jobs/{job_id}")[0]) == 404:
        assert time.monotonic() < deadline, "the waiting submission never became a job"
        time.sleep(0.1)
    assert status == 200
    fetched = request("POST", f"{bounded.url}/ojs/v1/workers/fetch", {"queues": ["fullw"]})[1]
    assert [j["id"] for j in fetched["jobs"]] == [job_id]
    assert request("POST", f"{bounded.url}/ojs/v1/workers/ack", {"job_id": job_id})[0] == 200
    again = request("POST", f"{bounded.url}/ojs/v1/workers/fetch", {"queues": ["fullw"]})[1]
    assert again["jobs"] == [], "the submission became more than one job"
