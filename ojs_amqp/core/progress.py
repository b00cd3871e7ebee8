"""Job progress (ojs-progress): what a worker may report about an active job, and how a new
report folds into the last one. Pure: the engine decides when it is stored.

A job's progress is a plain dict (it lives in the job record as it is):
`{"progress": float | None, "message": str | None, "data": dict | None, "attempt": int,
"updated_at_ms": int}`. It belongs to one attempt: a new attempt starts without any.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from ojs_amqp.core.times import format_ms
from ojs_amqp.errors import InvalidRequest

#: The spec recommends keeping `data` within 4 KB; we refuse more than 16 KB of it, so a
#: runaway handler cannot bloat the store with one report.
MAX_DATA_BYTES = 16 * 1024
MAX_MESSAGE_CHARS = 1000


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    """One report: at least one of the three is set."""

    value: float | None = None
    message: str | None = None
    data: dict[str, Any] | None = None


def parse_update(body: Any) -> ProgressUpdate:
    """A progress report from its JSON body (HTTP PUT or the AMQP control message).
    Out-of-range numbers are clamped to [0, 1] (the spec's fire-and-forget rule); a value
    that is not a number at all is refused."""
    if not isinstance(body, dict):
        raise InvalidRequest("a progress report must be a JSON object")
    # `percentage` (0 to 100) is what some SDKs send instead of `progress`.
    field, scale = ("progress", 1.0) if "progress" in body else ("percentage", 100.0)
    raw = body.get(field)
    value: float | None = None
    if raw is not None:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or math.isnan(raw):
            raise InvalidRequest(
                f"{field} must be a number between 0 and {scale:g}", details={"field": field}
            )
        value = min(1.0, max(0.0, float(raw) / scale))
    message = body.get("message")
    if message is not None and not isinstance(message, str):
        raise InvalidRequest("message must be a string", details={"field": "message"})
    data = body.get("data")
    if data is not None:
        if not isinstance(data, dict):
            raise InvalidRequest("data must be a JSON object", details={"field": "data"})
        if len(orjson.dumps(data)) > MAX_DATA_BYTES:
            raise InvalidRequest(
                f"data must be at most {MAX_DATA_BYTES} bytes of JSON (4 KB is recommended)",
                details={"field": "data"},
            )
    if value is None and message is None and data is None:
        raise InvalidRequest(
            "a progress report needs 'progress' (0.0 to 1.0), 'data' or 'message'",
            details={"field": "progress"},
        )
    return ProgressUpdate(value, message[:MAX_MESSAGE_CHARS] if message else message, data)


def merge(
    previous: dict[str, Any] | None, update: ProgressUpdate, attempt: int, now_ms: int
) -> dict[str, Any]:
    """The progress after `update`. The number never goes down within an attempt (a lower
    value keeps the higher one); message and data are replaced by the newest that has them."""
    same = previous is not None and previous.get("attempt") == attempt
    before = previous if same and previous is not None else {}
    value = update.value
    old = before.get("progress")
    if value is None or (old is not None and value < old):
        value = old
    return {
        "progress": value,
        "message": update.message if update.message is not None else before.get("message"),
        "data": update.data if update.data is not None else before.get("data"),
        "attempt": attempt,
        "updated_at_ms": now_ms,
    }


def completed(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    """On completion a job that reported progress is at 1.0 (PRG-005)."""
    if progress is None:
        return None
    return {**progress, "progress": 1.0}


def to_wire(progress: dict[str, Any] | None) -> dict[str, Any]:
    """The progress as answered (GET .../progress, the job envelope, events): nulls when none
    was reported, never absent keys."""
    if progress is None:
        return {"progress": None, "message": None, "data": None, "updated_at": None}
    updated = progress.get("updated_at_ms")
    return {
        "progress": progress.get("progress"),
        "message": progress.get("message"),
        "data": progress.get("data"),
        "updated_at": format_ms(updated) if isinstance(updated, int) else None,
    }
