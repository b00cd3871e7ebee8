"""Deliveries held past the broker's consumer_timeout.

RabbitMQ closes a channel one of whose deliveries has stayed unacked longer than
`consumer_timeout` (30 min by default on 3.10). The HTTP gateway holds deliveries unacked:
buffered ones until a FETCH takes them, leased ones until the worker acks. Here the private
node's timeout is 3 s (checked every 0.5 s) and:

- with `--delivery-hold-ms` below it, the daemon hands buffered deliveries back and moves long
  leases to a timer on the delay ladder, so the channel is never closed; that timer still
  returns a leased job to its queue when the daemon is killed while holding it;
- with the hold above it, the broker closes the gateway channel: the daemon says so, consumes
  again, and every job still reaches the state its worker reported;
- a native worker whose consumer channel the broker closes starts over instead of waiting
  for deliveries that never come.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ojs_amqp.sdk import JobContext, Worker
from tests.daemon import Daemon, request
from tests.rabbit_node import RabbitNode

CONSUMER_TIMEOUT_MS = 3000


@pytest.fixture
def short_consumer_timeout(rabbit_node: RabbitNode) -> Iterator[RabbitNode]:
    """The node closes channels that hold a delivery unacked for 3 s; channels opened
    after this (the daemons' and workers' of the test) are subject to it."""

    def set_env(timeout_ms: int, tick_ms: int) -> None:
        rabbit_node.ctl("eval", f"application:set_env(rabbit, consumer_timeout, {timeout_ms}).")
        rabbit_node.ctl("eval", f"application:set_env(rabbit, channel_tick_interval, {tick_ms}).")

    set_env(CONSUMER_TIMEOUT_MS, 500)
    try:
        yield rabbit_node
    finally:
        set_env(1_800_000, 60_000)  # RabbitMQ 3.10's defaults


def _api(daemon: Daemon) -> str:
    return f"{daemon.url}/ojs/v1"


def _push(daemon: Daemon, queue: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        status, body = request(
            "POST",
            f"{_api(daemon)}/jobs",
            {"type": "ct.job", "args": [i], "options": {"queue": queue}},
        )
        assert status == 201, body
        ids.append(body["job"]["id"])
    return ids


def _fetch(daemon: Daemon, queue: str, count: int, **extra: Any) -> list[dict[str, Any]]:
    status, body = request(
        "POST", f"{_api(daemon)}/workers/fetch",
        {"queues": [queue], "count": count, "worker_id": "w", **extra},
    )  # fmt: skip
    assert status == 200, body
    return list(body["jobs"])


def _hold(daemon: Daemon, job_id: str, seconds: float) -> None:
    """Keep one lease alive with heartbeats, as a worker running a long job would."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, body = request(
            "POST", f"{_api(daemon)}/workers/heartbeat", {"worker_id": "w", "active_jobs": [job_id]}
        )
        assert status == 200 and job_id in body["jobs_extended"], body
        time.sleep(0.5)


def _ack_all(daemon: Daemon, ids: list[str]) -> None:
    for job_id in ids:
        status, body = request("POST", f"{_api(daemon)}/workers/ack", {"job_id": job_id})
        assert status == 200 and body["state"] == "completed", body


def _state(daemon: Daemon, job_id: str) -> str:
    return str(request("GET", f"{_api(daemon)}/jobs/{job_id}")[1]["job"]["state"])


def _log(daemon: Daemon) -> str:
    assert daemon.log_path is not None
    return daemon.log_path.read_text()


CLOSED = "the broker closed the channel consuming"


def test_a_hold_below_the_consumer_timeout_keeps_the_gateway_channel_open(
    short_consumer_timeout: RabbitNode, make_node_daemon: Callable[..., Daemon]
) -> None:
    # Given a gateway holding one long lease and nine buffered jobs nobody fetches
    daemon = make_node_daemon("--delivery-hold-ms", "1500", "--prefetch", "20")
    ids = _push(daemon, "held", 10)
    first = _fetch(daemon, "held", 1, visibility_timeout_ms=60_000)[0]["id"]

    # When the worker keeps the job for three consumer timeouts
    _hold(daemon, first, 3 * CONSUMER_TIMEOUT_MS / 1000)

    # Then the broker never closed the channel, and every job is still there exactly once
    assert CLOSED not in _log(daemon)
    assert _state(daemon, first) == "active"
    rest = [j["id"] for j in _fetch(daemon, "held", 20)]
    assert sorted([first, *rest]) == sorted(ids)
    _ack_all(daemon, [first, *rest])
    assert {_state(daemon, job_id) for job_id in ids} == {"completed"}
    assert _fetch(daemon, "held", 20, visibility_timeout_ms=1000) == []


def test_a_handed_over_lease_returns_to_its_queue_after_the_daemon_is_killed(
    short_consumer_timeout: RabbitNode, make_node_daemon: Callable[..., Daemon]
) -> None:
    # Given a lease held past the hold limit: its delivery is acked, a ladder timer stands in
    daemon = make_node_daemon("--delivery-hold-ms", "1500")
    (job_id,) = _push(daemon, "crash", 1)
    leased_at = time.monotonic()
    assert _fetch(daemon, "crash", 1, visibility_timeout_ms=8000)[0]["id"] == job_id
    time.sleep(3.0)

    # When the daemon dies holding it, and comes back
    daemon.kill()
    daemon.start()

    # Then the job is not handed out again before its lease would have ended...
    early = _fetch(daemon, "crash", 1, visibility_timeout_ms=8000)
    assert early == [] or time.monotonic() - leased_at >= 8.0, early
    # ...and is back in its queue once it has, as after a visibility timeout
    again: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not again and time.monotonic() < deadline:
        again = _fetch(daemon, "crash", 1)
    assert [j["id"] for j in again] == [job_id]
    assert again[0]["attempt"] == 2
    assert again[0]["errors"][-1]["code"] == "visibility_timeout"
    _ack_all(daemon, [job_id])


def test_the_gateway_consumes_again_after_the_broker_closes_its_channel(
    short_consumer_timeout: RabbitNode, make_node_daemon: Callable[..., Daemon]
) -> None:
    # Given a hold limit above the broker's timeout: nothing stops the broker closing it
    daemon = make_node_daemon("--prefetch", "20")
    ids = _push(daemon, "killed", 10)
    first = _fetch(daemon, "killed", 1, visibility_timeout_ms=60_000)[0]["id"]

    # When the worker keeps its job past the consumer timeout
    _hold(daemon, first, 2 * CONSUMER_TIMEOUT_MS / 1000)

    # Then the daemon says the broker closed the channel, consumes again, and hands out
    # the other jobs and new ones; the long job is still its worker's
    assert CLOSED in _log(daemon)
    later = _push(daemon, "killed", 1)
    fetched: list[str] = []
    deadline = time.monotonic() + 15
    while len(fetched) < 10 and time.monotonic() < deadline:
        fetched += [j["id"] for j in _fetch(daemon, "killed", 20)]
    assert sorted(fetched) == sorted([*ids[1:], *later]), fetched
    _ack_all(daemon, [first, *fetched])
    assert {_state(daemon, job_id) for job_id in [*ids, *later]} == {"completed"}


async def test_a_native_worker_whose_consumer_channel_is_closed_starts_over(
    short_consumer_timeout: RabbitNode, make_node_daemon: Callable[..., Daemon]
) -> None:
    # Given a native worker whose first job outlives the consumer timeout once
    daemon = make_node_daemon()
    runs: list[int] = []

    async def slow_once(ctx: JobContext) -> str:
        runs.append(ctx.attempt)
        if len(runs) == 1:
            await asyncio.sleep(2 * CONSUMER_TIMEOUT_MS / 1000)
        return "done"

    worker = Worker(
        short_consumer_timeout.amqp_url, prefix=daemon.prefix, queues=["native-ct"],
        handlers={"ct.job": slow_once}, concurrency=2, heartbeat_interval=0.5,
    )  # fmt: skip
    task = asyncio.create_task(worker.run(handle_signals=False))
    try:
        async with asyncio.timeout(15):
            await worker.consuming.wait()
        (job_id,) = await asyncio.to_thread(_push, daemon, "native-ct", 1)

        # When the broker closes the worker's consumer channel under the running job
        # Then the worker starts over, the job is delivered again and completes
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(_state, daemon, job_id) != "completed":
            assert time.monotonic() < deadline, (runs, worker.stats)
            await asyncio.sleep(0.2)
        assert len(runs) >= 2 and worker.stats.reconnections >= 1, (runs, worker.stats)
    finally:
        await worker.stop(grace_period=1.0)
        await task
