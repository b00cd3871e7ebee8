"""Events reach subscribers: the SSE stream and the events exchange."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import aio_pika
import aiohttp

from tests.daemon import AMQP_URL, Daemon, request


async def _read_sse(resp: aiohttp.ClientResponse, count: int) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    fields: dict[str, str] = {}
    while len(events) < count:
        line = (await resp.content.readline()).decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if line == "":
            if fields.get("event") and fields["event"] != "gap":
                events.append({**json.loads(fields["data"]), "sse_id": fields.get("id")})
            fields = {}
            continue
        key, _, value = line.partition(": ")
        fields[key] = value
    return events


async def test_an_sse_client_sees_a_job_from_enqueue_to_completion_in_order(
    daemon: Daemon,
) -> None:
    url = f"{daemon.url}/ojs/v1"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/events/stream?queues=sse-q", timeout=aiohttp.ClientTimeout(20)) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        # When a job is pushed, fetched and acked while the stream is open
        job = await asyncio.to_thread(
            request,
            "POST",
            f"{url}/jobs",
            {"type": "s.job", "args": [], "options": {"queue": "sse-q"}},
        )
        job_id = job[1]["job"]["id"]
        fetched = await asyncio.to_thread(
            request, "POST", f"{url}/workers/fetch", {"queues": ["sse-q"]}
        )
        assert fetched[1]["jobs"][0]["id"] == job_id
        await asyncio.to_thread(request, "POST", f"{url}/workers/ack", {"job_id": job_id})
        events = await asyncio.wait_for(_read_sse(resp, 3), 10)

    # Then the stream carries its events, in order, as OJS event envelopes
    assert [e["type"] for e in events] == ["job.enqueued", "job.started", "job.completed"]
    assert all(e["subject"] == job_id and e["specversion"] == "1.0" for e in events)
    ids = [int(str(e["sse_id"])) for e in events]
    assert ids == sorted(ids)


async def test_events_are_published_to_the_events_exchange_when_enabled(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--events-exchange")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{daemon.prefix}.ojs.exchange.events")
        queue = await channel.declare_queue(f"{daemon.prefix}.test-events-{uuid.uuid4().hex[:6]}",
                                            exclusive=True)  # fmt: skip
        await queue.bind(exchange, "job.*.evq")
        # When a job is pushed to queue evq
        await asyncio.to_thread(
            request, "POST", f"{daemon.url}/ojs/v1/jobs",
            {"type": "e.job", "args": [], "options": {"queue": "evq"}},
        )  # fmt: skip
        # Then its job.enqueued event arrives on a queue bound by routing key
        message = None
        for _ in range(50):
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                break
            await asyncio.sleep(0.1)
        assert message is not None
        body = json.loads(message.body)
        assert body["type"] == "job.enqueued" and body["data"]["queue"] == "evq"
        assert message.routing_key == "job.enqueued.evq"
