"""JobTracing: span names, kinds, parents, attributes and status, on an in-memory exporter."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ojs_amqp.core import lifecycle
from ojs_amqp.core.job import Job, JobState
from ojs_amqp.core.retry import FailureReport, RetryPolicy
from ojs_amqp.tracing import JobTracing, create_tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[JobTracing]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield JobTracing(provider.get_tracer("test"))
    provider.shutdown()


def _job(meta: dict[str, object] | None = None, max_attempts: int = 3) -> Job:
    return Job(
        id="019a0000-0000-7000-8000-000000000001", type="email.send", queue="mail", args=[],
        state=JobState.AVAILABLE, created_at_ms=1_000, meta=meta or {},
        retry=RetryPolicy(max_attempts=max_attempts),
    )  # fmt: skip


def _only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def _hex(value: int, width: int) -> str:
    return f"{value:0{width}x}"


def test_the_enqueue_span_is_a_producer_child_of_the_traceparent_given_at_push(
    tracing: JobTracing, exporter: InMemorySpanExporter
) -> None:
    job = _job({"traceparent": TRACEPARENT, "tracestate": "vendor=1"})
    tracing.start_enqueue(job).end()

    span = _only(exporter, "ojs.enqueue mail")
    assert span.kind is SpanKind.PRODUCER
    assert _hex(span.context.trace_id, 32) == TRACE_ID
    assert span.parent is not None and _hex(span.parent.span_id, 16) == PARENT_ID
    assert span.parent.is_remote
    assert dict(span.attributes or {}) == {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": "mail",
        "messaging.message.id": job.id,
        "messaging.operation": "publish",
        "messaging.operation.type": "send",
        "ojs.job.type": "email.send",
        "ojs.job.attempt": 0,
        "ojs.enqueue.source": "push",
        "ojs.job.outcome": "accepted",
    }
    # The producer's own context is kept: it is the job's, not ours to replace.
    assert job.meta == {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}


def test_a_job_without_a_traceparent_gets_the_enqueue_spans_and_processing_continues_it(
    tracing: JobTracing, exporter: InMemorySpanExporter
) -> None:
    job = _job()
    given = job.meta
    tracing.start_enqueue(job).end()
    enqueue = _only(exporter, "ojs.enqueue mail")
    assert enqueue.parent is None  # no current span: a new trace
    assert job.meta["traceparent"].startswith(
        f"00-{_hex(enqueue.context.trace_id, 32)}-{_hex(enqueue.context.span_id, 16)}-"
    )
    assert given == {}  # a new dict: the caller's body is not changed behind its back

    active = lifecycle.fetch(job, 2_000, "w1")
    tracing.started(active)
    tracing.finished(active, lifecycle.ack(active, 3_000), "completed")

    process = _only(exporter, "ojs.process mail")
    assert process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == enqueue.context.trace_id
    assert process.parent is not None and process.parent.span_id == enqueue.context.span_id
    attributes = dict(process.attributes or {})
    assert attributes["messaging.operation"] == "process"
    assert attributes["ojs.job.attempt"] == 1
    assert attributes["ojs.job.outcome"] == "completed"
    assert attributes["ojs.job.state"] == "completed"
    assert process.status.status_code is StatusCode.UNSET
    assert tracing.open_spans == 0


def test_a_failed_attempt_ends_its_span_with_an_error_status(
    tracing: JobTracing, exporter: InMemorySpanExporter
) -> None:
    active = lifecycle.fetch(_job({"traceparent": TRACEPARENT}, max_attempts=1), 2_000, None)
    tracing.started(active)
    report = FailureReport(code="smtp_down", message="the relay refused")
    failed = lifecycle.fail(active, 3_000, report, lambda: 0.5)
    assert failed.state is JobState.DISCARDED
    tracing.finished(active, failed, "failed")

    span = _only(exporter, "ojs.process mail")
    assert _hex(span.context.trace_id, 32) == TRACE_ID
    assert span.parent is not None and _hex(span.parent.span_id, 16) == PARENT_ID
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "the relay refused"
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "smtp_down"
    assert attributes["ojs.job.outcome"] == "failed"
    assert attributes["ojs.job.state"] == "discarded"


def test_each_attempt_gets_its_own_span_and_a_requeue_is_not_an_error(
    tracing: JobTracing, exporter: InMemorySpanExporter
) -> None:
    job = _job({"traceparent": TRACEPARENT})
    first = lifecycle.fetch(job, 2_000, None)
    tracing.started(first)
    tracing.finished(first, lifecycle.requeue(first, 2_500), "requeued")
    second = lifecycle.fetch(lifecycle.requeue(first, 2_500), 3_000, None)
    tracing.started(second)
    expired = lifecycle.lease_expired(second, 4_000, "visibility", lambda: 0.5)
    tracing.finished(second, expired, "lease_expired")

    requeued, lapsed = exporter.get_finished_spans()
    assert requeued.status.status_code is StatusCode.UNSET
    assert dict(requeued.attributes or {})["ojs.job.outcome"] == "requeued"
    assert lapsed.status.status_code is StatusCode.ERROR
    assert dict(lapsed.attributes or {})["error.type"] == "visibility_timeout"
    assert requeued.context.span_id != lapsed.context.span_id


def test_a_native_report_without_a_heartbeat_records_the_attempt_from_its_start(
    tracing: JobTracing, exporter: InMemorySpanExporter
) -> None:
    active = lifecycle.fetch(_job({"traceparent": TRACEPARENT}), 2_000, "native-1")
    tracing.finished(active, lifecycle.ack(active, 2_750), "completed")

    span = _only(exporter, "ojs.process mail")
    assert span.start_time == 2_000 * 1_000_000
    assert span.end_time is not None and span.end_time > span.start_time


def test_finishing_a_job_that_was_never_active_records_nothing(
    tracing: JobTracing, exporter: InMemorySpanExporter
) -> None:
    job = _job()
    tracing.finished(job, lifecycle.cancel(job, 2_000), "cancelled")
    assert exporter.get_finished_spans() == ()


def test_open_spans_are_bounded_and_ended_on_close(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = JobTracing(provider.get_tracer("test"), max_open=2)
    for n in range(3):
        tracing.started(lifecycle.fetch(replace(_job(), id=f"job-{n}"), 2_000, None))
    assert tracing.open_spans == 2
    (evicted,) = exporter.get_finished_spans()
    assert dict(evicted.attributes or {})["messaging.message.id"] == "job-0"
    assert dict(evicted.attributes or {})["ojs.job.outcome"] == "untracked"
    tracing.close()
    assert tracing.open_spans == 0
    outcomes = [dict(s.attributes or {})["ojs.job.outcome"] for s in exporter.get_finished_spans()]
    assert outcomes == ["untracked", "interrupted", "interrupted"]


def test_a_refused_push_ends_its_enqueue_span_with_the_reason(
    tracing: JobTracing, exporter: InMemorySpanExporter
) -> None:
    tracing.start_enqueue(_job()).end(RuntimeError("queue full"))
    span = _only(exporter, "ojs.enqueue mail")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "queue full"
    assert dict(span.attributes or {})["ojs.job.outcome"] == "refused"


def test_tracing_is_off_without_opentelemetry_or_when_the_sdk_is_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert create_tracing() is not None
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert create_tracing() is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert create_tracing() is None


def test_without_a_configured_tracer_provider_no_span_is_made(
    exporter: InMemorySpanExporter,
) -> None:
    # No test sets the global provider: the API alone yields no-op spans, which are skipped.
    global_tracing = create_tracing()
    assert global_tracing is not None and not global_tracing.live
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = JobTracing(provider.get_tracer("test"), live=lambda: False)
    for candidate in (global_tracing, tracing):
        job = _job()
        candidate.start_enqueue(job).end()
        active = lifecycle.fetch(job, 2_000, None)
        candidate.started(active)
        candidate.finished(active, lifecycle.ack(active, 3_000), "completed")
        assert job.meta == {} and candidate.open_spans == 0
    assert exporter.get_finished_spans() == ()
