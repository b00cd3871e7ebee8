"""Jobs <-> the JSON envelopes the SDK sends and reads back.

`request_envelope` turns `push()`'s Python arguments into the envelope `parse_enqueue`
validates (the same code as `POST /ojs/v1/jobs`); `submission_envelope` is what goes to
ojs.exchange.submit; `job_from_wire` reads the daemon's answers back into a `Job`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ojs_amqp.core.durations import parse_duration_ms
from ojs_amqp.core.envelope import RetryIn, build_retry_policy
from ojs_amqp.core.job import MISSING, SYSTEM_FIELDS, Job, JobState, to_wire
from ojs_amqp.core.times import format_ms, parse_rfc3339_ms
from ojs_amqp.errors import InvalidRequest

#: Keys `to_wire` writes; anything else in an envelope is a client's unknown field.
_WIRE_KEYS = frozenset(
    {
        "specversion", "id", "type", "queue", "args", "meta", "priority", "state", "attempt",
        "max_attempts", "timeout_ms", "visibility_timeout_ms", "retry", "tags", "unique",
        "schema", "created_at", "enqueued_at", "scheduled_at", "expires_at", "activated_at",
        "started_at", "completed_at", "cancelled_at", "discarded_at", "next_attempt_at",
        "retry_delay_ms", "worker_id", "error", "errors", "result", "dead_letter",
    }
)  # fmt: skip
_TIMES = (
    "created_at", "enqueued_at", "scheduled_at", "expires_at", "activated_at", "started_at",
    "completed_at", "cancelled_at", "discarded_at", "next_attempt_at",
)  # fmt: skip
_CLIENT_TIMES = ("scheduled_at", "expires_at")


def rfc3339(value: datetime) -> str:
    """A timezone-aware datetime as the wire's RFC 3339 text (UTC, milliseconds)."""
    if value.tzinfo is None:
        raise InvalidRequest(
            f"datetime {value!r} has no timezone; pass an aware datetime (e.g. tz=UTC)"
        )
    return format_ms(round(value.astimezone(UTC).timestamp() * 1000))


def _delay_ms(delay: Any) -> int:
    """`delay=` as a timedelta, seconds (int/float) or an OJS duration string."""
    if isinstance(delay, timedelta):
        seconds: float = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    elif isinstance(delay, str):
        try:
            return parse_duration_ms(delay)
        except ValueError as exc:
            raise InvalidRequest(f"delay: {exc}", details={"field": "delay"}) from None
    else:
        raise InvalidRequest("delay must be a timedelta, seconds or a duration string")
    if seconds < 0:
        raise InvalidRequest("delay cannot be negative", details={"field": "delay"})
    return round(seconds * 1000)


def request_envelope(
    job_type: str, args: Sequence[Any], queue: str, options: Mapping[str, Any], now_ms: int
) -> dict[str, Any]:
    """The envelope of a push: options are OJS envelope fields; datetimes become RFC 3339
    and `delay` becomes an absolute `scheduled_at`."""
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise InvalidRequest("args must be a list of JSON values", details={"field": "args"})
    body: dict[str, Any] = {"type": job_type, "args": list(args), "queue": queue}
    for key, value in options.items():
        if key == "delay":
            if "scheduled_at" in options or "delay_until" in options:
                raise InvalidRequest("give either delay or scheduled_at, not both")
            body["scheduled_at"] = format_ms(now_ms + _delay_ms(value))
        elif isinstance(value, datetime):
            body[key] = rfc3339(value)
        else:
            body[key] = value
    return body


def submission_envelope(job: Job) -> dict[str, Any]:
    """What to publish to ojs.exchange.submit for a validated job: the daemon parses it with
    the same code and gets the same job (system fields are ignored, so `pending` is said)."""
    body = to_wire(job)
    if job.state is JobState.PENDING:
        body["pending"] = True
    return body


def _time(envelope: Mapping[str, Any], name: str) -> int | None:
    text = envelope.get(name)
    if not isinstance(text, str):
        return None
    try:
        return parse_rfc3339_ms(text)
    except ValueError:
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def job_from_wire(envelope: Mapping[str, Any]) -> Job:
    """A Job from the daemon's envelope (INFO/CANCEL/submission replies); lenient, as it is
    the daemon's own output."""
    retry_in = envelope.get("retry")
    policy = build_retry_policy(
        RetryIn.model_validate(retry_in) if isinstance(retry_in, Mapping) else None,
        _int(envelope.get("max_attempts")),
    )
    times = {f"{name}_ms": _time(envelope, name) for name in _TIMES}
    client_times = {
        name: envelope[name]
        for name in _CLIENT_TIMES
        if isinstance(envelope.get(name), str) and times[f"{name}_ms"] is not None
        and envelope[name] != format_ms(times[f"{name}_ms"] or 0)
    }  # fmt: skip
    error = envelope.get("error")
    errors = envelope.get("errors")
    tags = envelope.get("tags")
    unique = envelope.get("unique")
    meta = envelope.get("meta")
    job = Job(
        id=str(envelope.get("id", "")),
        type=str(envelope.get("type", "")),
        queue=str(envelope.get("queue", "default")),
        args=list(envelope.get("args") or []),
        state=JobState(envelope.get("state", JobState.AVAILABLE.value)),
        created_at_ms=times.pop("created_at_ms") or 0,
        meta=dict(meta) if isinstance(meta, Mapping) else {},
        priority=_int(envelope.get("priority")) or 0,
        attempt=_int(envelope.get("attempt")) or 0,
        retry=policy,
        timeout_ms=_int(envelope.get("timeout_ms")),
        visibility_timeout_ms=_int(envelope.get("visibility_timeout_ms")),
        tags=list(tags) if isinstance(tags, list) else None,
        unique=dict(unique) if isinstance(unique, Mapping) else None,
        schema=_str(envelope.get("schema")),
        retry_delay_ms=_int(envelope.get("retry_delay_ms")),
        worker_id=_str(envelope.get("worker_id")),
        error=dict(error) if isinstance(error, Mapping) else None,
        errors=list(errors) if isinstance(errors, list) else [],
        result=envelope.get("result", MISSING),
        dead_letter=envelope.get("dead_letter") is True,
        client_times=client_times,
        extra={k: v for k, v in envelope.items() if k not in _WIRE_KEYS and k not in SYSTEM_FIELDS},
    )
    for name, value in times.items():
        setattr(job, name, value)
    return job
