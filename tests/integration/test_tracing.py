"""W3C trace context set at push travels with the job, across a retry."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

from tests.daemon import Daemon, request

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _push_with_headers(daemon: Daemon, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(
        f"{daemon.url}/ojs/v1/jobs", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "traceparent": TRACEPARENT,
                 "tracestate": "vendor=1"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201
        return json.loads(resp.read())["job"]  # type: ignore[no-any-return]


def test_a_trace_id_set_at_push_reaches_the_worker_and_survives_a_retry(daemon: Daemon) -> None:
    url = f"{daemon.url}/ojs/v1"
    job = _push_with_headers(daemon, {
        "type": "t.traced", "args": [],
        "options": {"queue": "traced", "retry": {"initial_interval": "PT0.1S", "jitter": False}},
    })  # fmt: skip
    assert job["meta"] == {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}

    first = request("POST", f"{url}/workers/fetch", {"queues": ["traced"]})[1]["jobs"][0]
    assert first["meta"]["traceparent"] == TRACEPARENT
    request("POST", f"{url}/workers/nack", {"job_id": first["id"], "error": {"message": "x"}})

    again: list[dict[str, object]] = []
    deadline = time.monotonic() + 10
    while not again and time.monotonic() < deadline:
        again = request("POST", f"{url}/workers/fetch", {"queues": ["traced"]})[1]["jobs"]
    assert again and again[0]["attempt"] == 2
    assert again[0]["meta"]["traceparent"] == TRACEPARENT  # type: ignore[index]


def test_a_traceparent_in_the_body_wins_over_the_header(daemon: Daemon) -> None:
    mine = "00-11111111111111111111111111111111-2222222222222222-01"
    job = _push_with_headers(
        daemon, {"type": "t.traced", "args": [], "meta": {"traceparent": mine}}
    )
    assert job["meta"]["traceparent"] == mine  # type: ignore[index]


async def test_the_trace_context_rides_the_broker_copy_in_binding_headers(daemon: Daemon) -> None:
    import aio_pika

    from tests.daemon import AMQP_URL

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        # A second queue bound like the job queue receives a copy of every published message
        tap = await channel.declare_queue(exclusive=True)
        await tap.bind(f"{daemon.prefix}.ojs.exchange.direct", "tapped")
        _push_with_headers(daemon, {"type": "t.wire", "args": [], "options": {"queue": "tapped"}})
        message = await tap.get(timeout=5, fail=False)
        for _ in range(50):
            if message is not None:
                break
            await asyncio.sleep(0.1)
            message = await tap.get(fail=False)
        assert message is not None
        headers = message.headers
        assert headers["x-ojs-trace-id"] == TRACEPARENT
        assert headers["x-ojs-trace-state"] == "vendor=1"
        assert headers["x-ojs-queue"] == "tapped" and headers["x-ojs-attempt"] == 1
        assert message.content_type == "application/openjobspec+json"
        assert message.delivery_mode == 2
