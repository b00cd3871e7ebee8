"""OpenTelemetry spans of the job lifecycle, when the `otel` extra is installed.

Two spans per job, following the OTel messaging semantic conventions:

- PRODUCER `ojs.enqueue {queue}` while a job is accepted (HTTP or AMQP push, cron, or the
  adoption of a message another client published);
- CONSUMER `ojs.process {queue}` from the moment an attempt becomes active (HTTP lease, or a
  native worker's first heartbeat or report) until it completes, fails, is requeued or
  cancelled, or its lease runs out. One span per attempt.

Both join the job's trace through the W3C `traceparent` kept in `job.meta`; a job pushed
without one gets the enqueue span's, so its process spans and workers continue that trace.

opentelemetry is imported only by `create_tracing`: without it (or with OTEL_SDK_DISABLED=true)
the engine holds None and skips every hook with one attribute check, so a daemon without the
extra pays nothing per job. With the API but no tracer provider configured (no SDK, or not
run under `opentelemetry-instrument`), each hook returns after one look at the global provider.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ojs_amqp import __version__
from ojs_amqp.core.job import Job, JobState

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

#: Process spans kept open at most; beyond this the oldest is ended (outcome `untracked`),
#: so workers that vanish without a report cannot grow memory without bound.
MAX_OPEN_SPANS = 50_000

# Attribute names (OTel messaging semantic conventions, plus ojs.*).
SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
MESSAGE_ID = "messaging.message.id"
OPERATION = "messaging.operation"
OPERATION_TYPE = "messaging.operation.type"
JOB_TYPE = "ojs.job.type"
JOB_ATTEMPT = "ojs.job.attempt"
JOB_OUTCOME = "ojs.job.outcome"
JOB_STATE = "ojs.job.state"
ERROR_TYPE = "error.type"

#: Outcomes of an attempt that end its process span with an error status.
_ERROR_OUTCOMES = frozenset({"failed", "lease_expired", "discarded"})


def create_tracing() -> JobTracing | None:
    """JobTracing on the global tracer provider, or None when opentelemetry is not
    importable or OTEL_SDK_DISABLED is true (tracing off, no per-job cost)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        return None

    seen = False
    next_look = 0.0

    def configured() -> bool:
        """Whether a tracer provider was set; until then every span would be a no-op.
        Asking OpenTelemetry reads the environment, a cost on every job, so a provider once
        set is remembered (it cannot be unset) and its absence is looked at again once a
        second."""
        nonlocal seen, next_look
        if not seen and time.monotonic() >= next_look:
            seen = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
            next_look = time.monotonic() + 1.0
        return seen

    return JobTracing(trace.get_tracer("ojs_amqp", __version__), live=configured)


class EnqueueSpan:
    """The open PRODUCER span of one push; ended by the engine once the job is accepted."""

    __slots__ = ("_span",)

    def __init__(self, span: Span | None) -> None:
        self._span = span

    def end(self, error: BaseException | None = None) -> None:
        """End it; with `error`, the push was refused and the span says why."""
        if self._span is None:
            return
        if error is not None:
            _set_error(self._span, type(error).__name__, str(error))
            self._span.set_attribute(JOB_OUTCOME, "refused")
        else:
            self._span.set_attribute(JOB_OUTCOME, "accepted")
        self._span.end()


class JobTracing:
    """What the engine calls at each move; holds the open process span of each active job."""

    def __init__(
        self,
        tracer: Tracer,
        *,
        max_open: int = MAX_OPEN_SPANS,
        live: Callable[[], bool] | None = None,
    ) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self._trace = trace
        self._new_context = context.Context
        self._propagator = TraceContextTextMapPropagator()
        self._max_open = max_open
        #: False while no tracer provider is set: spans would be no-ops, so none are made.
        self._live = live or _always
        #: job id -> the process span of its current attempt (insertion order = age)
        self._open: dict[str, Span] = {}

    # --- enqueue ---------------------------------------------------------------------------

    def start_enqueue(self, job: Job, operation: str = "push") -> EnqueueSpan:
        """Open the enqueue span, as a child of the job's traceparent (or of the current
        context); a job without a traceparent is given this span's, before it is stored."""
        if not self._live():
            return _UNTRACED
        kind = self._trace.SpanKind.PRODUCER
        span = self._tracer.start_span(
            f"ojs.enqueue {job.queue}", context=self._parent(job, None), kind=kind,
            attributes={**_common(job, "publish", "send"), JOB_ATTEMPT: job.attempt,
                        "ojs.enqueue.source": operation},
        )  # fmt: skip
        meta = job.meta if isinstance(job.meta, dict) else {}
        if "traceparent" not in meta and span.get_span_context().is_valid:
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
            job.meta = {**meta, **carrier}
        return EnqueueSpan(span)

    # --- process ---------------------------------------------------------------------------

    def started(self, job: Job) -> None:
        """An attempt became active now (HTTP lease or a native worker's first sign)."""
        if not self._live():
            return
        self._end_open(job.id, "superseded", None)
        self._open[job.id] = self._start_process(job, None)
        if len(self._open) > self._max_open:
            oldest = next(iter(self._open))
            self._end_open(oldest, "untracked", None)

    def finished(self, active: Job, new: Job, outcome: str) -> None:
        """The attempt `active` ended in `new` (completed, failed, requeued, ...). With no
        span open (a native worker that reported without a heartbeat, or a lease from before
        a restart), one is recorded from the attempt's start time."""
        if self._end_open(active.id, outcome, new) or not self._live():
            return
        if active.state is JobState.ACTIVE and active.started_at_ms is not None:
            span = self._start_process(active, active.started_at_ms)
            _finish(span, outcome, new)

    def close(self) -> None:
        """End every open span (the daemon stops; leased jobs go back to the broker)."""
        for job_id in list(self._open):
            self._end_open(job_id, "interrupted", None)

    @property
    def open_spans(self) -> int:
        return len(self._open)

    @property
    def live(self) -> bool:
        """Whether spans are made now (a tracer provider is configured)."""
        return self._live()

    def _start_process(self, job: Job, started_at_ms: int | None) -> Span:
        start_ns = None
        if started_at_ms is not None:
            start_ns = min(started_at_ms * 1_000_000, time.time_ns())
        return self._tracer.start_span(
            f"ojs.process {job.queue}",
            context=self._parent(job, self._new_context()),
            kind=self._trace.SpanKind.CONSUMER,
            attributes={**_common(job, "process", "process"), JOB_ATTEMPT: job.attempt},
            start_time=start_ns,
        )

    def _end_open(self, job_id: str, outcome: str, new: Job | None) -> bool:
        span = self._open.pop(job_id, None)
        if span is None:
            return False
        _finish(span, outcome, new)
        return True

    def _parent(self, job: Job, default: Context | None) -> Context | None:
        """The context of the job's traceparent, else `default` (None: the current one)."""
        meta = job.meta if isinstance(job.meta, dict) else {}
        traceparent = meta.get("traceparent")
        if not isinstance(traceparent, str):
            return default
        carrier = {"traceparent": traceparent}
        tracestate = meta.get("tracestate")
        if isinstance(tracestate, str):
            carrier["tracestate"] = tracestate
        return self._propagator.extract(carrier, context=self._new_context())


def _always() -> bool:
    return True


_UNTRACED = EnqueueSpan(None)


def _common(job: Job, operation: str, operation_type: str) -> dict[str, Any]:
    return {
        SYSTEM: "rabbitmq",
        DESTINATION: job.queue,
        MESSAGE_ID: job.id,
        OPERATION: operation,
        OPERATION_TYPE: operation_type,
        JOB_TYPE: job.type,
    }


def _finish(span: Span, outcome: str, new: Job | None) -> None:
    span.set_attribute(JOB_OUTCOME, outcome)
    if new is not None:
        span.set_attribute(JOB_STATE, new.state.value)
        if outcome in _ERROR_OUTCOMES:
            error = new.error or {}
            _set_error(span, str(error.get("code") or outcome), str(error.get("message") or ""))
    span.end()


def _set_error(span: Span, error_type: str, message: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute(ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, message or None))
