"""The stale-copy rule, deterministically: a message carrying an older `x-ojs-copy` than the
store's record of the job is consumed and dropped on delivery, never handed to a worker and
never taken for the job's current copy.

The older copy arrives while a second worker holds the job's current copy. Without the
copy-number check on delivery the daemon would take it for the current copy redelivered
(`_recover_active`): the lease would hold the older message and the current one would stay
unacked in the daemon for good (until the broker's consumer_timeout closes the channel over
it). So once the job completed, the test stops the daemon and reads the job queue itself:
whatever the daemon still held comes back there, and nothing may."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from typing import Any

import aio_pika
import orjson

from ojs_amqp.amqp import codec
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.core.job import Job, JobState, from_record
from tests.daemon import Daemon, request


def _stored(daemon: Daemon, job_id: str) -> Job:
    db = sqlite3.connect(daemon.store)
    try:
        row = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        db.close()
    return from_record(orjson.loads(row[0]))


async def _publish(daemon: Daemon, job: Job, within: float = 10.0) -> None:
    """Publish `job` as a copy into its job queue, confirmed by the broker, and wait until
    the queue has delivered it (no ready message left: the daemon is its only consumer)."""
    connection = await aio_pika.connect(daemon.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = Topology(daemon.prefix).job_queue(job.queue)
        await channel.default_exchange.publish(codec.encode(job), routing_key=queue)
        deadline = time.monotonic() + within
        while (await channel.declare_queue(queue, passive=True)).declaration_result.message_count:
            assert time.monotonic() < deadline, "the daemon never took the older copy"
            await asyncio.sleep(0.05)


async def _left_in(daemon: Daemon, queue: str, within: float = 10.0) -> int:
    """The messages in a queue once it has no consumer (so whatever a consumer held unacked
    has been returned to it), read from the queue itself by a passive declare."""
    connection = await aio_pika.connect(daemon.amqp_url)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + within
        while True:
            declared = (await channel.declare_queue(queue, passive=True)).declaration_result
            if not declared.consumer_count:
                return int(declared.message_count or 0)
            assert time.monotonic() < deadline, f"{queue} still has a consumer"
            await asyncio.sleep(0.05)


def _fetch(daemon: Daemon, worker: str, **extra: Any) -> list[dict[str, Any]]:
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/workers/fetch",
        {"queues": ["stale"], "worker_id": worker, **extra},
    )  # fmt: skip
    assert status == 200, body
    return list(body["jobs"])


def test_an_older_copy_delivered_after_the_move_was_recorded_is_dropped_not_run(
    daemon: Daemon,
) -> None:
    job_queue = Topology(daemon.prefix).job_queue("stale")
    # Given a job whose first lease lapsed: the store records it available at a newer copy
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/jobs",
        {"type": "stale.test", "args": ["current"], "options": {"queue": "stale"}},
    )  # fmt: skip
    assert status == 201, body
    job_id = body["job"]["id"]
    assert [j["id"] for j in _fetch(daemon, "w1", visibility_timeout_ms=1000)] == [job_id]
    old = _stored(daemon, job_id)
    deadline = time.monotonic() + 10
    while _stored(daemon, job_id).state is not JobState.AVAILABLE:
        assert time.monotonic() < deadline, "the lease never lapsed"
        time.sleep(0.1)
    assert _stored(daemon, job_id).copy > old.copy
    # and a second worker holding that newer copy
    leased = _fetch(daemon, "w2")
    assert [(j["id"], j["attempt"]) for j in leased] == [(job_id, 2)]
    # When the older copy (as its first lease saw it, but available) is delivered too
    stale = replace(old, state=JobState.AVAILABLE, args=["stale"], worker_id=None)
    asyncio.run(_publish(daemon, stale))
    # Then no worker gets it
    assert _fetch(daemon, "w3") == [], "the older copy was handed out"
    # and the job goes on from its current copy
    ack = {"job_id": job_id, "worker_id": "w2", "result": {"ok": True}}
    assert request("POST", f"{daemon.url}/ojs/v1/workers/ack", ack)[0] == 200
    job = request("GET", f"{daemon.url}/ojs/v1/jobs/{job_id}")[1]["job"]
    assert job["state"] == "completed" and job["args"] == ["current"] and job["attempt"] == 2
    # and the daemon held no delivery of it: once it stops, nothing comes back to the queue
    # (a copy it took for the current one, or left unacked, would be returned now)
    daemon.stop()
    assert asyncio.run(_left_in(daemon, job_queue)) == 0
