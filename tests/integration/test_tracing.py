"""W3C trace context set at push travels with the job, across a retry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ojs_amqp.clock import now_ms
from ojs_amqp.engine.cron import CronScheduler
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.http.app import HttpApi
from ojs_amqp.http.server import HttpServer
from ojs_amqp.runtime import Runtime
from ojs_amqp.settings import Settings
from ojs_amqp.tracing import JobTracing
from tests.conftest import SESSION_PREFIX
from tests.daemon import Daemon, delete_topology, free_port, request

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


# --- OpenTelemetry spans (in-process engine on the real broker, in-memory exporter) ---------


@contextlib.asynccontextmanager
async def _traced_http(
    engine: JobEngine,
) -> AsyncIterator[tuple[ClientSession, InMemorySpanExporter]]:
    """The engine with tracing on an in-memory exporter, behind the real HTTP server."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine.tracing = JobTracing(provider.get_tracer("test"))
    cron = CronScheduler(engine, engine.store, engine.transport, clock=now_ms)
    api = HttpApi(engine, cron, engine.settings)
    server = HttpServer(
        api.handle, max_body_bytes=engine.settings.max_body_bytes, error_response=api.refused
    )
    await server.start("127.0.0.1", 0)
    try:
        async with ClientSession(base_url=f"http://127.0.0.1:{server.port}") as client:
            yield client, exporter
    finally:
        await server.close()
        engine.tracing = None
        provider.shutdown()


def _span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


async def test_push_fetch_ack_record_enqueue_and_process_spans_in_the_pushers_trace(
    live_engine: JobEngine,
) -> None:
    async with _traced_http(live_engine) as (client, exporter):
        pushed = await client.post(
            "/ojs/v1/jobs", json={"type": "t.span", "args": [], "options": {"queue": "spans"}},
            headers={"traceparent": TRACEPARENT},
        )  # fmt: skip
        assert pushed.status == 201
        job_id = (await pushed.json())["job"]["id"]
        fetched = await (
            await client.post("/ojs/v1/workers/fetch", json={"queues": ["spans"]})
        ).json()
        assert fetched["jobs"][0]["id"] == job_id
        acked = await client.post("/ojs/v1/workers/ack", json={"job_id": job_id})
        assert acked.status == 200

    enqueue = _span(exporter, "ojs.enqueue spans")
    process = _span(exporter, "ojs.process spans")
    trace_id = int(TRACEPARENT.split("-")[1], 16)
    parent_id = int(TRACEPARENT.split("-")[2], 16)
    for span, kind in ((enqueue, SpanKind.PRODUCER), (process, SpanKind.CONSUMER)):
        assert span.kind is kind
        assert span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.span_id == parent_id
        assert (span.attributes or {})["messaging.message.id"] == job_id
        assert (span.attributes or {})["messaging.destination.name"] == "spans"
    assert (process.attributes or {})["ojs.job.outcome"] == "completed"
    assert (process.attributes or {})["ojs.job.attempt"] == 1
    assert process.status.status_code is StatusCode.UNSET
    assert enqueue.end_time is not None and process.start_time is not None
    assert enqueue.end_time <= process.start_time


async def test_a_job_pushed_without_trace_context_is_given_one_and_a_failure_is_an_error(
    live_engine: JobEngine,
) -> None:
    async with _traced_http(live_engine) as (client, exporter):
        body = {"type": "t.span", "args": [],
                "options": {"queue": "spans-fail", "retry": {"max_attempts": 1}}}  # fmt: skip
        pushed = await (await client.post("/ojs/v1/jobs", json=body)).json()
        traceparent = pushed["job"]["meta"]["traceparent"]
        fetch = {"queues": ["spans-fail"]}
        job = (await (await client.post("/ojs/v1/workers/fetch", json=fetch)).json())["jobs"][0]
        assert job["meta"]["traceparent"] == traceparent  # the worker continues the trace
        nack = {"job_id": job["id"], "error": {"code": "boom", "message": "it broke"}}
        assert (await client.post("/ojs/v1/workers/nack", json=nack)).status == 200

    enqueue = _span(exporter, "ojs.enqueue spans-fail")
    process = _span(exporter, "ojs.process spans-fail")
    assert traceparent.split("-")[2] == f"{enqueue.context.span_id:016x}"
    assert process.parent is not None and process.parent.span_id == enqueue.context.span_id
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "it broke"
    assert (process.attributes or {})["ojs.job.state"] == "discarded"


async def test_a_job_another_client_published_gets_an_enqueue_span_when_adopted(
    live_engine: JobEngine,
) -> None:
    import aio_pika

    from tests.daemon import AMQP_URL

    async with _traced_http(live_engine) as (client, exporter):
        await live_engine.ensure_queue("spans-adopt")
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(live_engine.broker.topology.direct_exchange)
            envelope = {"type": "t.foreign", "args": [1], "meta": {"traceparent": TRACEPARENT}}
            await exchange.publish(
                aio_pika.Message(json.dumps(envelope).encode(), message_id="foreign-1"),
                routing_key="spans-adopt",
            )
        fetch = {"queues": ["spans-adopt"]}
        jobs = (await (await client.post("/ojs/v1/workers/fetch", json=fetch)).json())["jobs"]
        assert [j["id"] for j in jobs] == ["foreign-1"]
        await client.post("/ojs/v1/workers/ack", json={"job_id": "foreign-1"})

    enqueue = _span(exporter, "ojs.enqueue spans-adopt")
    assert (enqueue.attributes or {})["ojs.enqueue.source"] == "adopt"
    assert enqueue.context.trace_id == int(TRACEPARENT.split("-")[1], 16)
    assert _span(exporter, "ojs.process spans-adopt").context.trace_id == enqueue.context.trace_id


async def test_the_daemon_runs_without_opentelemetry(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """opentelemetry not importable: the runtime builds without tracing and jobs still run."""
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    prefix = f"{SESSION_PREFIX}-nootel-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        amqp_url=broker, http_port=free_port(), store_path=str(tmp_path / "s.db"), prefix=prefix
    )
    runtime = Runtime.build(settings)
    assert runtime.engine.tracing is None
    await runtime.start()
    try:
        async with ClientSession(f"http://{settings.http_address}") as http:
            body = {"type": "t.plain", "args": [], "options": {"queue": "no-otel"}}
            pushed = await (await http.post("/ojs/v1/jobs", json=body)).json()
            assert "traceparent" not in pushed["job"].get("meta", {})
            fetch = {"queues": ["no-otel"]}
            jobs = (await (await http.post("/ojs/v1/workers/fetch", json=fetch)).json())["jobs"]
            ack = await http.post("/ojs/v1/workers/ack", json={"job_id": jobs[0]["id"]})
            assert ack.status == 200
    finally:
        await runtime.stop()
        await asyncio.to_thread(delete_topology, prefix, broker)
