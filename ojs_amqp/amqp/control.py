"""Control messages of the native AMQP protocol, parsed into plain values (docs/amqp-protocol.md).

The AMQP edge's counterpart of http/schemas.py: from the `type` property and the body bytes
comes either a ControlMessage the engine can act on or an InvalidRequest saying what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ojs_amqp.amqp import protocol
from ojs_amqp.core.job import MISSING
from ojs_amqp.core.progress import ProgressUpdate, parse_update
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.core.times import parse_rfc3339_ms
from ojs_amqp.errors import InvalidRequest

_NEEDS_JOB_ID = frozenset(
    {
        protocol.CANCEL, protocol.HEARTBEAT, protocol.INFO, protocol.COMPLETED, protocol.FAILED,
        protocol.PROGRESS,
    }
)  # fmt: skip


class _ErrorIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = "handler_error"
    message: str = ""
    type: str | None = None
    retryable: bool | None = None
    details: dict[str, Any] | None = None


class _ControlIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    job_id: str | None = None
    worker_id: str | None = None
    copy_number: int | None = Field(default=None, alias="copy")
    attempt: int | None = None
    started_at: str | None = None
    result: Any = None
    error: _ErrorIn | None = None
    job: dict[str, Any] | None = None
    queues: list[str] | None = None
    started: bool = False
    delivery_count: int | None = None


@dataclass(frozen=True, slots=True)
class ControlMessage:
    kind: str
    job_id: str | None = None
    worker_id: str | None = None
    copy: int | None = None
    started_at_ms: int | None = None
    #: The attempt the worker says this was (reports); see engine/native.py (NativeReports.apply).
    attempt: int | None = None
    #: The handler's return value (MISSING when the report carried none).
    result: Any = MISSING
    failure: FailureReport | None = None
    #: The envelope as the worker received it, to adopt a job the store has never seen.
    envelope: dict[str, Any] | None = None
    queues: list[str] = field(default_factory=list)
    #: A heartbeat sent as a redelivered job starts (before it runs): the worker asks whether
    #: to run it, since earlier attempts may have died with their workers.
    started: bool = False
    #: The broker's `x-delivery-count` of that delivery (how often the copy came back).
    delivery_count: int = 0
    #: The reports of an `ojs.report.batch`, each parsed on its own: a bad one is refused
    #: alone, without its neighbours.
    reports: list[ControlMessage | InvalidRequest] = field(default_factory=list)
    #: The report of an `ojs.control.progress`.
    progress: ProgressUpdate | None = None


def parse_control(kind: str | None, body: bytes) -> ControlMessage:
    if kind not in protocol.CONTROL_TYPES:
        known = ", ".join(sorted(protocol.CONTROL_TYPES))
        raise InvalidRequest(
            f"unknown control message type {kind!r}; the AMQP 'type' property must be one of "
            f"{known}",
            details={"field": "type"},
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    if kind == protocol.BATCH:
        return _batch(data)
    return _parse(kind, data)


def _batch(data: Any) -> ControlMessage:
    reports = data.get("reports") if isinstance(data, dict) else None
    if not isinstance(reports, list) or not 0 < len(reports) <= protocol.MAX_BATCH:
        raise InvalidRequest(
            f"ojs.report.batch needs 'reports': a list of 1 to {protocol.MAX_BATCH} reports",
            details={"field": "reports"},
        )
    parsed: list[ControlMessage | InvalidRequest] = []
    for item in reports:
        kind = item.get("type") if isinstance(item, dict) else None
        try:
            if not isinstance(kind, str) or kind not in protocol.REPORT_TYPES:
                raise InvalidRequest(
                    f"a batched report's 'type' must be {protocol.COMPLETED} or {protocol.FAILED}",
                    details={"field": "type"},
                )
            parsed.append(_parse(kind, item))
        except InvalidRequest as exc:
            parsed.append(exc)
    return ControlMessage(kind=protocol.BATCH, reports=parsed)


def _parse(kind: str, data: Any) -> ControlMessage:
    try:
        parsed = _ControlIn.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"{where}: {first['msg']}", details={"field": where}) from None
    if kind in _NEEDS_JOB_ID and not parsed.job_id:
        raise InvalidRequest(f"{kind} needs 'job_id'", details={"field": "job_id"})
    if kind == protocol.HELLO and not parsed.queues:
        raise InvalidRequest("ojs.control.hello needs 'queues'", details={"field": "queues"})
    return ControlMessage(
        kind=kind,
        job_id=parsed.job_id,
        worker_id=parsed.worker_id,
        copy=parsed.copy_number,
        started_at_ms=_time(parsed.started_at),
        attempt=parsed.attempt,
        result=parsed.result if "result" in parsed.model_fields_set else MISSING,
        failure=_failure(parsed.error) if kind == protocol.FAILED else None,
        envelope=parsed.job,
        queues=parsed.queues or [],
        progress=parse_update(data) if kind == protocol.PROGRESS else None,
        started=parsed.started,
        delivery_count=max(0, parsed.delivery_count or 0),
    )


def _time(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_rfc3339_ms(text)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            f"started_at {text!r} is not an RFC 3339 time", details={"field": "started_at"}
        ) from None


def _failure(error: _ErrorIn | None) -> FailureReport:
    if error is None:
        return FailureReport(message="the worker reported a failure without details")
    return FailureReport(
        code=error.code,
        message=error.message,
        type=error.type,
        retryable=error.retryable,
        details=error.details or {},
    )
