"""Parse what producers send (HTTP `options` dialect or the flat envelope) into a Job.

Structural problems (missing or mistyped fields, malformed names) raise InvalidRequest (400);
well-formed values outside their allowed range raise ValidationFailed (422). Unknown
top-level fields are kept and returned; client values for system fields are ignored.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from ojs_amqp.core.durations import parse_duration_ms
from ojs_amqp.core.ids import is_uuidv7
from ojs_amqp.core.job import SYSTEM_FIELDS, Job, JobState
from ojs_amqp.core.retry import RetryPolicy
from ojs_amqp.core.times import parse_rfc3339_ms
from ojs_amqp.errors import InvalidRequest, Unsupported, ValidationFailed

TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_\-]*(\.[a-z][a-z0-9_\-]*)*$")
QUEUE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9\-.]*$")
#: OJS queue names that would collide with our own RabbitMQ names (ojs.queue.dlx.{q}, ...).
RESERVED_QUEUE_PREFIXES = ("control.", "dlx.", "retry.", "delay.")
MAX_NAME_BYTES = 255
PRIORITY_RANGE = (-100, 100)
MIN_VISIBILITY_TIMEOUT_MS = 1000

#: Options the spec defines that this daemon cannot honour yet: a job carrying one is refused
#: (422 unsupported) rather than run without it, on every push path (HTTP, ojs.exchange.submit,
#: cron templates). Option -> (feature, where the spec puts it). Delete a row when it lands.
UNHONOURED_OPTIONS: dict[str, tuple[str, str]] = {
    "unique": ("unique jobs", "conformance level 4, ojs-unique-jobs"),
    "rate_limit": ("per-job rate limits", "conformance level 4, ojs-rate-limiting"),
    "total_timeout": ("a total timeout across attempts", "ojs-timeouts"),
    "enqueue_ttl": ("an enqueue TTL", "ojs-timeouts"),
    "heartbeat_timeout": ("stalled-job detection by heartbeat timeout", "ojs-timeouts"),
    "grace_period": ("a grace period after the execution timeout", "ojs-timeouts"),
    "result_ttl": ("a result TTL", "ojs-results"),
}

Duration = StrictStr | StrictInt | StrictFloat
Number = StrictInt | StrictFloat


class RetryIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    max_attempts: StrictInt | None = None
    initial_interval: Duration | None = None
    initial_interval_ms: StrictInt | None = None
    backoff_coefficient: Number | None = None
    max_interval: Duration | None = None
    max_interval_ms: StrictInt | None = None
    jitter: StrictBool | None = None
    non_retryable_errors: list[StrictStr] | None = None
    on_exhaustion: StrictStr | None = None
    backoff_strategy: StrictStr | None = None
    backoff_type: StrictStr | None = None


class OptionsIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    queue: StrictStr | None = None
    priority: StrictInt | None = None
    timeout_ms: StrictInt | None = None
    timeout: StrictInt | None = None
    scheduled_at: StrictStr | None = None
    delay_until: StrictStr | None = None
    expires_at: StrictStr | None = None
    retry: RetryIn | None = None
    retry_policy: RetryIn | None = None
    max_attempts: StrictInt | None = None
    unique: dict[str, Any] | None = None
    tags: list[StrictStr] | None = None
    visibility_timeout_ms: StrictInt | None = None
    visibility_timeout: Duration | None = None
    pending: StrictBool | None = None
    metadata: dict[str, Any] | None = None


class EnqueueIn(OptionsIn):
    """The body of a push: required fields, plus every option also accepted at top level."""

    type: StrictStr
    args: list[Any]
    meta: dict[str, Any] | None = None
    id: StrictStr | None = None
    specversion: StrictStr | None = None
    schema_uri: StrictStr | None = Field(default=None, alias="schema")
    options: OptionsIn | None = None


def parse_enqueue(body: Any, *, now_ms: int, new_id: str) -> Job:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object with 'type' and 'args'")
    try:
        req = EnqueueIn.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc), details={"errors": _error_list(exc)}) from None
    _refuse_unhonoured(body)
    return _build(req, body, now_ms=now_ms, new_id=new_id)


def _refuse_unhonoured(body: dict[str, Any]) -> None:
    """422 unsupported for an option in UNHONOURED_OPTIONS, at the top level or in options
    (null counts as absent)."""
    options = body.get("options")
    for name, (feature, spec) in UNHONOURED_OPTIONS.items():
        for where, holder in (("options.", options), ("", body)):
            if isinstance(holder, dict) and holder.get(name) is not None:
                raise Unsupported(
                    f"{where}{name} asks for {feature}, which this daemon does not support "
                    f"yet ({spec}); the job was not enqueued. Remove the option to enqueue "
                    "it without that guarantee.",
                    details={"field": where + name, "feature": feature, "spec": spec},
                )


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "invalid job envelope: " + "; ".join(parts)


def _error_list(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
    ]


def _pick(name: str, req: EnqueueIn) -> Any:
    """An option from `options` if given there, else from the flat envelope."""
    if req.options is not None:
        value = getattr(req.options, name)
        if value is not None:
            return value
    return getattr(req, name)


def validate_type(job_type: str) -> None:
    if not TYPE_PATTERN.fullmatch(job_type) or len(job_type.encode()) > MAX_NAME_BYTES:
        raise InvalidRequest(
            f"type {job_type!r} is invalid: use dot-separated lower-case segments "
            "such as 'email.send' (letters, digits, '_' and '-'; 255 bytes at most)",
            details={"field": "type"},
        )


def validate_queue(queue: str) -> None:
    if not QUEUE_PATTERN.fullmatch(queue) or len(queue.encode()) > MAX_NAME_BYTES:
        raise InvalidRequest(
            f"queue {queue!r} is invalid: lower-case letters, digits, '-' and '.', "
            "starting with a letter or digit (255 bytes at most)",
            details={"field": "queue"},
        )
    if queue.startswith(RESERVED_QUEUE_PREFIXES):
        raise InvalidRequest(
            f"queue {queue!r} uses a reserved prefix ({', '.join(RESERVED_QUEUE_PREFIXES)})",
            details={"field": "queue"},
        )


def _time_ms(value: str, field: str, now_ms: int) -> int:
    """Absolute RFC 3339 time, or relative `+PT5S` / `PT5S` from now."""
    try:
        text = value.strip()
        if _is_relative(text):
            return now_ms + parse_duration_ms(text.lstrip("+"))
        return parse_rfc3339_ms(text)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequest(f"{field}: {exc}", details={"field": field}) from None


def _duration(value: Any, field: str) -> int:
    try:
        return parse_duration_ms(value)
    except (ValueError, TypeError) as exc:
        raise ValidationFailed(f"{field}: {exc}", details={"field": field}) from None


def build_retry_policy(r: RetryIn | None, max_attempts: int | None) -> RetryPolicy:
    """Merge a partial policy onto the defaults (RET-10) and validate it (RET-16)."""
    base = RetryPolicy()
    values = _retry_values(r) if r is not None else {}
    if max_attempts is not None and "max_attempts" not in values:
        values["max_attempts"] = max_attempts
    if "max_interval_ms" not in values:
        initial = values.get("initial_interval_ms", base.initial_interval_ms)
        values["max_interval_ms"] = max(base.max_interval_ms, initial)
    policy = RetryPolicy(**{**_policy_fields(base), **values})
    problems = policy.problems()
    if problems:
        raise ValidationFailed("; ".join(problems), details={"problems": problems})
    return policy


_STRATEGIES = ("none", "constant", "linear", "exponential", "polynomial")


def _retry_values(r: RetryIn) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in ("max_attempts", "jitter"):
        if getattr(r, name) is not None:
            values[name] = getattr(r, name)
    for name in ("initial_interval", "max_interval"):
        ms, iso = getattr(r, name + "_ms"), getattr(r, name)
        if ms is not None or iso is not None:
            label = f"retry.{name}_ms" if ms is not None else f"retry.{name}"
            values[name + "_ms"] = _duration(ms if ms is not None else iso, label)
    if r.backoff_coefficient is not None:
        values["backoff_coefficient"] = float(r.backoff_coefficient)
    if r.non_retryable_errors is not None:
        values["non_retryable_errors"] = tuple(r.non_retryable_errors)
    if r.on_exhaustion is not None:
        if r.on_exhaustion not in ("discard", "dead_letter"):
            raise ValidationFailed("retry.on_exhaustion must be 'discard' or 'dead_letter'")
        values["on_exhaustion"] = r.on_exhaustion
    strategy = r.backoff_strategy or r.backoff_type
    if strategy is not None:
        if strategy not in _STRATEGIES:
            raise ValidationFailed(
                f"retry.backoff_strategy must be one of {', '.join(_STRATEGIES)}"
            )
        values["backoff_strategy"] = strategy
    return values


def _policy_fields(policy: RetryPolicy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in policy.__slots__}


def _timeouts(req: EnqueueIn) -> tuple[int | None, int | None]:
    """Execution timeout (ms; `timeout` in seconds also accepted) and visibility timeout."""
    timeout_ms = _pick("timeout_ms", req)
    timeout_s = _pick("timeout", req)
    if timeout_ms is None and timeout_s:
        timeout_ms = timeout_s * 1000
    if timeout_ms is not None and timeout_ms <= 0:
        raise ValidationFailed("timeout_ms must be > 0", details={"field": "timeout_ms"})
    visibility_ms = _pick("visibility_timeout_ms", req)
    if visibility_ms is None and _pick("visibility_timeout", req) is not None:
        visibility_ms = _duration(_pick("visibility_timeout", req), "visibility_timeout")
    if visibility_ms is not None and visibility_ms < MIN_VISIBILITY_TIMEOUT_MS:
        raise ValidationFailed(
            f"visibility_timeout_ms must be >= {MIN_VISIBILITY_TIMEOUT_MS}",
            details={"field": "visibility_timeout_ms"},
        )
    return timeout_ms, visibility_ms


def _placement(req: EnqueueIn, new_id: str) -> tuple[str, str, int]:
    """Validated (queue, id, priority)."""
    queue = _pick("queue", req)
    if queue is None:
        queue = "default"
    validate_queue(queue)
    job_id = req.id if req.id is not None else new_id
    if not is_uuidv7(job_id):
        raise InvalidRequest(f"id {job_id!r} is not a lower-case UUIDv7", details={"field": "id"})
    priority = _pick("priority", req)
    if priority is None:
        priority = 0
    if not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
        raise InvalidRequest(
            f"priority {priority} is out of range [{PRIORITY_RANGE[0]}, {PRIORITY_RANGE[1]}]",
            details={"field": "priority"},
        )
    return queue, job_id, priority


def _build(req: EnqueueIn, body: dict[str, Any], *, now_ms: int, new_id: str) -> Job:
    validate_type(req.type)
    queue, job_id, priority = _placement(req, new_id)
    timeout_ms, visibility_ms = _timeouts(req)
    retry_in = _pick("retry", req) or _pick("retry_policy", req)
    policy = build_retry_policy(retry_in, _pick("max_attempts", req))

    meta = dict(req.meta or {})
    metadata = req.options.metadata if req.options is not None else None
    if metadata is None:
        metadata = req.metadata
    if metadata:
        meta.update(metadata)

    scheduled_text = _pick("scheduled_at", req) or _pick("delay_until", req)
    scheduled_ms = _time_ms(scheduled_text, "scheduled_at", now_ms) if scheduled_text else None
    expires_text = _pick("expires_at", req)
    expires_ms = _time_ms(expires_text, "expires_at", now_ms) if expires_text else None

    if _pick("pending", req):
        state = JobState.PENDING
    elif scheduled_ms is not None and scheduled_ms > now_ms:
        state = JobState.SCHEDULED
    else:
        state = JobState.AVAILABLE

    return Job(
        id=job_id,
        type=req.type,
        queue=queue,
        args=req.args,
        state=state,
        created_at_ms=now_ms,
        meta=meta,
        priority=priority,
        retry=policy,
        timeout_ms=timeout_ms,
        visibility_timeout_ms=visibility_ms,
        tags=_pick("tags", req),
        unique=_pick("unique", req),
        schema=req.schema_uri,
        enqueued_at_ms=now_ms if state is JobState.AVAILABLE else None,
        scheduled_at_ms=scheduled_ms,
        expires_at_ms=expires_ms,
        client_times=_absolute_texts(scheduled_text, expires_text),
        extra=_unknown_fields(body),
    )


def _absolute_texts(scheduled: str | None, expires: str | None) -> dict[str, str]:
    texts = {"scheduled_at": scheduled, "expires_at": expires}
    return {k: v.strip() for k, v in texts.items() if v and not _is_relative(v)}


def _is_relative(text: str) -> bool:
    text = text.strip()
    return text.startswith("+") or text.upper().startswith("P")


_KNOWN = frozenset(EnqueueIn.model_fields) | {"schema", "options"}


def _unknown_fields(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _KNOWN and k not in SYSTEM_FIELDS}
