"""The stale-copy rule, deterministically: a message carrying an older `x-ojs-copy` than the
store's record of the job is consumed and dropped, never handed to a worker.

(The copy-number check on delivery is one of three guards: with it removed, the buffer's
one-delivery-per-job rule and the compare-and-set at lease time still keep this test green.
It fails only if the older copy can reach a worker.)"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace

import aio_pika
import orjson

from ojs_amqp.amqp import codec
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.core.job import Job, JobState, from_record
from tests.daemon import Daemon, request


def _stored(daemon: Daemon, job_id: str) -> Job:
    row = (
        sqlite3.connect(daemon.store)
        .execute("SELECT doc FROM jobs WHERE id = ?", (job_id,))
        .fetchone()
    )
    return from_record(orjson.loads(row[0]))


async def _publish(daemon: Daemon, job: Job) -> int:
    """Publish `job` as a copy into its job queue; returns the ready messages left there
    once the daemon has had a moment to take it."""
    connection = await aio_pika.connect(daemon.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = Topology(daemon.prefix).job_queue(job.queue)
        await channel.default_exchange.publish(codec.encode(job), routing_key=queue)
        await asyncio.sleep(1.0)
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


def test_an_older_copy_delivered_after_the_move_was_recorded_is_dropped_not_run(
    daemon: Daemon,
) -> None:
    # Given a job whose first lease lapsed: the store records it available at a newer copy
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/jobs",
        {"type": "stale.test", "args": ["current"], "options": {"queue": "stale"}},
    )  # fmt: skip
    assert status == 201, body
    job_id = body["job"]["id"]
    fetched = request(
        "POST", f"{daemon.url}/ojs/v1/workers/fetch",
        {"queues": ["stale"], "worker_id": "w1", "visibility_timeout_ms": 1000},
    )[1]  # fmt: skip
    assert [j["id"] for j in fetched["jobs"]] == [job_id]
    old = _stored(daemon, job_id)
    deadline = time.monotonic() + 10
    while _stored(daemon, job_id).state is not JobState.AVAILABLE:
        assert time.monotonic() < deadline, "the lease never lapsed"
        time.sleep(0.1)
    current = _stored(daemon, job_id)
    assert current.copy > old.copy
    # When the older copy (as its first lease saw it, but available) is delivered too
    stale = replace(old, state=JobState.AVAILABLE, args=["stale"], worker_id=None)
    left = asyncio.run(_publish(daemon, stale))
    assert left == 0, "the stale copy was not consumed"
    # Then a worker gets the job once, from its current copy, and nothing more
    fetched = request(
        "POST", f"{daemon.url}/ojs/v1/workers/fetch",
        {"queues": ["stale"], "worker_id": "w2", "count": 10},
    )[1]  # fmt: skip
    assert [(j["id"], j["args"]) for j in fetched["jobs"]] == [(job_id, ["current"])]
    again = request("POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": ["stale"]})[1]
    assert again["jobs"] == [], f"the stale copy was handed out: {again}"
    # and the job goes on from its current copy
    ack = {"job_id": job_id, "worker_id": "w2", "result": {"ok": True}}
    assert request("POST", f"{daemon.url}/ojs/v1/workers/ack", ack)[0] == 200
    job = request("GET", f"{daemon.url}/ojs/v1/jobs/{job_id}")[1]["job"]
    assert job["state"] == "completed" and job["args"] == ["current"] and job["attempt"] == 2
