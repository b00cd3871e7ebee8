"""Bodies and properties of the control messages the SDK sends (docs/amqp-protocol.md,
"Control messages"): worker reports, heartbeats, hello and RPC requests.

Pure functions, so the exact bytes a worker sends can be unit-tested. Reports splice the
delivered envelope in as raw JSON (`orjson.Fragment`): re-encoding it per job would cost more
than the rest of the report.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from typing import Any

import orjson
from pamqp.commands import Basic

from ojs_amqp.core.times import format_ms
from ojs_amqp.sdk.errors import JobError

CONTENT_TYPE = "application/json"
#: Reported error messages and tracebacks are cut here: the daemon stores every attempt's
#: error, and a runaway message must not bloat the store.
MAX_MESSAGE_CHARS = 2000
MAX_TRACEBACK_CHARS = 4000
#: Code of a failed report when no handler is registered for the job's type.
UNKNOWN_TYPE = "unknown_type"
#: Code of a failed report when the handler's return value is not JSON.
UNSERIALIZABLE_RESULT = "unserializable_result"
HANDLER_ERROR = "handler_error"
TIMEOUT = "timeout"
#: Code of a failed report for a redelivered job whose attempts all died with their worker.
WORKER_LOST = "worker_lost"


def properties(
    kind: str, *, reply_to: str | None = None, correlation_id: str | None = None
) -> Basic.Properties:
    """Persistent JSON with the kind in `type`. A new object per message: aiormq writes a
    message id into it, and returns are matched by that id."""
    return Basic.Properties(
        content_type=CONTENT_TYPE,
        delivery_mode=2,
        message_type=kind,
        reply_to=reply_to,
        correlation_id=correlation_id,
    )


def error_of(exc: BaseException, *, with_traceback: bool = True) -> dict[str, Any]:
    """The structured error of a failed attempt: code, message, type (the exception class
    name, which `non_retryable_errors` may list), retryable if the handler said, details."""
    code = HANDLER_ERROR
    retryable: bool | None = None
    details: dict[str, Any] = {}
    if isinstance(exc, JobError):
        code, retryable, details = exc.code, exc.retryable, dict(exc.details)
        message = exc.message
    else:
        message = str(exc) or type(exc).__name__
    if with_traceback and exc.__traceback__ is not None:
        # Frames only: type and message are fields of their own, and may be huge.
        frames = "".join(traceback.format_tb(exc.__traceback__))
        details.setdefault("traceback", frames[-MAX_TRACEBACK_CHARS:])
    error: dict[str, Any] = {
        "code": code,
        "message": message[:MAX_MESSAGE_CHARS],
        "type": type(exc).__name__,
    }
    if retryable is not None:
        error["retryable"] = retryable
    if details:
        error["details"] = details
    return error


def unknown_type_error(job_type: str, known: Iterable[str]) -> dict[str, Any]:
    names = sorted(known)
    return {
        "code": UNKNOWN_TYPE,
        "message": f"no handler for job type {job_type!r} on this worker",
        "type": "UnknownJobType",
        "details": {"job_type": job_type, "registered": names[:50]},
    }


def timeout_error(timeout_ms: Any) -> dict[str, Any]:
    """An async handler ran past the job's `timeout_ms` and was interrupted (the code and
    type the daemon uses for its own execution timeouts)."""
    return {
        "code": TIMEOUT,
        "message": f"the handler ran longer than the job's timeout_ms ({timeout_ms} ms)",
        "type": TIMEOUT,
    }


def worker_lost_error(spent: int, max_attempts: int, returned: int) -> dict[str, Any]:
    """A job whose attempts all ended with their worker (killed, crashed, cut off): the
    delivery count says so, and the job is reported failed instead of run again."""
    return {
        "code": WORKER_LOST,
        "message": (
            f"attempt {spent} of {max_attempts} was lost with its worker: the job went back "
            f"to its queue unfinished {returned} times (x-delivery-count)"
        ),
        "type": WORKER_LOST,
        "details": {"delivery_count": returned, "max_attempts": max_attempts},
    }


def _report(
    job_id: str,
    worker_id: str,
    copy: int | None,
    attempt: int | None,
    started_at_ms: int,
    envelope: bytes | None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "job_id": job_id,
        "worker_id": worker_id,
        "started_at": format_ms(started_at_ms),
    }
    if copy is not None:
        report["copy"] = copy
    if attempt is not None:
        report["attempt"] = attempt
    if envelope is not None:
        report["job"] = orjson.Fragment(envelope)
    return report


def completed_report(
    *,
    job_id: str,
    worker_id: str,
    copy: int | None,
    attempt: int | None,
    started_at_ms: int,
    result: Any,
    envelope: bytes | None,
) -> bytes:
    """`ojs.report.completed`; raises orjson.JSONEncodeError if `result` is not JSON."""
    report = _report(job_id, worker_id, copy, attempt, started_at_ms, envelope)
    if result is not None:
        report["result"] = result
    return orjson.dumps(report)


def failed_report(
    *,
    job_id: str,
    worker_id: str,
    copy: int | None,
    attempt: int | None,
    started_at_ms: int,
    error: dict[str, Any],
    envelope: bytes | None,
) -> bytes:
    report = _report(job_id, worker_id, copy, attempt, started_at_ms, envelope)
    report["error"] = error
    # default=str: details a handler attached may hold anything; the report must still go.
    return orjson.dumps(report, default=str)


def heartbeat(job_id: str, worker_id: str, envelope: bytes | None = None) -> bytes:
    """`ojs.control.heartbeat`; with the envelope (a job's first beat) the daemon can adopt a
    binding-PUSH job it has never seen, and show it active while it still runs."""
    body: dict[str, Any] = {"job_id": job_id, "worker_id": worker_id}
    if envelope is not None:
        body["job"] = orjson.Fragment(envelope)
    return orjson.dumps(body)


def progress(job_id: str, worker_id: str, report: dict[str, Any], envelope: bytes | None) -> bytes:
    """`ojs.control.progress`: a heartbeat with a progress report (`progress`, `message`,
    `data`); like a heartbeat, it carries the envelope until the daemon has seen the job."""
    body: dict[str, Any] = {**report, "job_id": job_id, "worker_id": worker_id}
    if envelope is not None:
        body["job"] = orjson.Fragment(envelope)
    return orjson.dumps(body)


def restart(
    job_id: str, worker_id: str, copy: int | None, envelope: bytes, delivery_count: int
) -> bytes:
    """The heartbeat a worker sends, asking for the answer, before it runs a copy that came
    back to its queue unfinished: the daemon counts the attempts lost with earlier workers
    and answers the job as it stands (run it only if `active`)."""
    body: dict[str, Any] = {
        "job_id": job_id, "worker_id": worker_id, "started": True,
        "delivery_count": delivery_count, "job": orjson.Fragment(envelope),
    }  # fmt: skip
    if copy is not None:
        body["copy"] = copy
    return orjson.dumps(body)


def batch_item(kind: str, report: bytes) -> bytes:
    """A report (a JSON object from completed_report / failed_report) as an item of
    `ojs.report.batch`: the same object with its own `type` first. Spliced as bytes, so a
    report is encoded once whether it goes alone or in a batch."""
    if not report.startswith(b"{") or len(report) < 2:
        raise ValueError("a report must be a JSON object")
    head = b'{"type":' + orjson.dumps(kind)
    return head + b"}" if report == b"{}" else head + b"," + report[1:]


def batch_body(items: Iterable[bytes]) -> bytes:
    """The body of `ojs.report.batch` from batch_item()s (1 to protocol.MAX_BATCH)."""
    return b'{"reports":[' + b",".join(items) + b"]}"


def hello(queues: Iterable[str], worker_id: str | None) -> bytes:
    body: dict[str, Any] = {"queues": list(queues)}
    if worker_id is not None:
        body["worker_id"] = worker_id
    return orjson.dumps(body)


def job_request(job_id: str) -> bytes:
    """Body of INFO and CANCEL."""
    return orjson.dumps({"job_id": job_id})
