"""Job <-> AMQP message: properties and x-ojs-* headers per the binding (DESIGN §2)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pamqp.commands import Basic

from ojs_amqp.amqp.inbound import Inbound
from ojs_amqp.core.job import Job, to_wire
from ojs_amqp.core.times import format_ms

CONTENT_TYPE = "application/openjobspec+json"

H_JOB_ID = "x-ojs-job-id"
H_STATE = "x-ojs-state"
H_COPY = "x-ojs-copy"
H_DUE_AT = "x-ojs-due-at"
#: The header a quorum queue sets on a message it delivers again: how often it was returned
#: (RabbitMQ 3.10 and 4.0 count every return: reject or nack with requeue, a closed
#: channel, a lost connection; docs/operations.md, "Delivery limits").
H_DELIVERY_COUNT = "x-delivery-count"
#: What `death_reason` says when the broker dead-lettered a message for its delivery limit.
DELIVERY_LIMIT = "delivery_limit"


def amqp_priority(priority: int) -> int:
    """OJS priority (-100..100, higher first) to AMQP 0..9, keeping 10/0/-10 and 3/2/1 apart."""
    bands = ((-50, 0), (-11, 1), (-2, 2), (-1, 3), (0, 4), (1, 5), (2, 6), (9, 7), (49, 8))
    for upper, bucket in bands:
        if priority <= upper:
            return bucket
    return 9


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message ready for aiormq's basic_publish (no aio-pika Message: it costs ~100 µs)."""

    body: bytes
    properties: Basic.Properties


def encode(job: Job, *, due_at_ms: int | None = None) -> Outgoing:
    headers: dict[str, Any] = {
        H_JOB_ID: job.id,
        H_STATE: job.state.value,
        H_COPY: job.copy,
        "x-ojs-queue": job.queue,
        "x-ojs-attempt": job.attempt + 1,
        "x-ojs-max-attempts": job.retry.max_attempts,
        "x-ojs-created-at": format_ms(job.created_at_ms),
    }
    if job.enqueued_at_ms is not None:
        headers["x-ojs-enqueued-at"] = format_ms(job.enqueued_at_ms)
    if job.scheduled_at_ms is not None:
        headers["x-ojs-scheduled-at"] = format_ms(job.scheduled_at_ms)
    for key, header in (("traceparent", "x-ojs-trace-id"), ("tracestate", "x-ojs-trace-state")):
        value = job.meta.get(key) if isinstance(job.meta, dict) else None
        if isinstance(value, str):
            headers[header] = value
    if job.error:
        headers["x-ojs-error-code"] = str(job.error.get("code", ""))[:255].upper()
        headers["x-ojs-error-message"] = str(job.error.get("message", ""))[:1024]
    if due_at_ms is not None:
        headers[H_DUE_AT] = due_at_ms
    correlation = job.meta.get("correlation_id") if isinstance(job.meta, dict) else None
    properties = Basic.Properties(
        content_type=CONTENT_TYPE,
        content_encoding="utf-8",
        delivery_mode=2,
        message_id=job.id,
        message_type=job.type,
        priority=amqp_priority(job.priority),
        timestamp=datetime.fromtimestamp(job.created_at_ms // 1000, tz=UTC),
        app_id="ojs",
        correlation_id=correlation if isinstance(correlation, str) else None,
        headers=headers,
    )
    return Outgoing(orjson.dumps(to_wire(job)), properties)


def properties_of(message: Inbound) -> Basic.Properties:
    """The properties of a delivered message, to publish it again unchanged (persistent)."""
    p = message.properties
    return Basic.Properties(
        content_type=p.content_type,
        content_encoding=p.content_encoding,
        # Not the broker's count of returns: published again, it is a fresh message.
        headers={k: v for k, v in (p.headers or {}).items() if k != H_DELIVERY_COUNT},
        delivery_mode=2,
        priority=p.priority,
        correlation_id=p.correlation_id,
        message_id=p.message_id,
        timestamp=p.timestamp,
        message_type=p.message_type,
        app_id=p.app_id,
    )


def republished(message: Inbound) -> Outgoing:
    """A delivered message as a fresh one, to publish again where it came from: its
    properties (reply_to included, so a caller waiting for an answer still gets it), minus
    the broker's count of its returns."""
    properties = properties_of(message)
    properties.reply_to = message.properties.reply_to
    return Outgoing(message.body, properties)


@dataclass(frozen=True, slots=True)
class CopyRef:
    """What a delivery says about itself, read from headers without parsing the body."""

    job_id: str | None
    copy: int | None
    due_at_ms: int | None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_ref(headers: dict[str, Any] | None, message_id: str | None) -> CopyRef:
    headers = headers or {}
    job_id = headers.get(H_JOB_ID)
    if isinstance(job_id, bytes):
        job_id = job_id.decode("utf-8", "replace")
    if not isinstance(job_id, str):
        job_id = message_id
    return CopyRef(
        job_id=job_id, copy=_int(headers.get(H_COPY)), due_at_ms=_int(headers.get(H_DUE_AT))
    )


def delivery_count(headers: dict[str, Any] | None) -> int:
    """How often the broker says this message was returned to its queue (0: never)."""
    count = _int((headers or {}).get(H_DELIVERY_COUNT))
    return count if count is not None and count > 0 else 0


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def death_reason(headers: dict[str, Any] | None) -> str | None:
    """Why the broker dead-lettered a message, most recent death first: `rejected`,
    `expired`, `maxlen` or `delivery_limit` (x-death, or x-last-/x-first-death-reason)."""
    headers = headers or {}
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        reason = _text(deaths[0].get("reason"))
        if reason is not None:
            return reason
    for key in ("x-last-death-reason", "x-first-death-reason"):
        reason = _text(headers.get(key))
        if reason is not None:
            return reason
    return None
