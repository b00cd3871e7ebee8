"""OJS responses and request bodies: the exact content type, the error envelope, JSON in."""

from __future__ import annotations

from typing import Any

import orjson

from ojs_amqp.errors import (
    InvalidPayload,
    InvalidRequest,
    OjsError,
    PayloadTooLarge,
    RequestTimeout,
    TooManyConnections,
)
from ojs_amqp.http.server import Request, Response

CONTENT_TYPE = "application/openjobspec+json"
ACCEPTED_CONTENT_TYPES = ("application/openjobspec+json", "application/json")
DOCS_URL = "https://github.com/openjobspec/spec/blob/main/spec/ojs-errors.md"
#: orjson reads 1024 levels but writes only ~254; stored documents add a few levels on top.
MAX_JSON_DEPTH = 128
_JSON_HEADER = ("Content-Type", CONTENT_TYPE)


def json_response(
    payload: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(orjson.dumps(payload), status, [_JSON_HEADER, *(headers or ())])


def fetched_response(jobs: list[dict[str, Any]]) -> Response:
    """`{"jobs": [...], "job": <the first>}`, each job serialised once: the first is in the
    answer twice (the OpenAPI document's `job`), and a FETCH answer is mostly its jobs."""
    if not jobs:
        return Response(b'{"jobs":[]}', 200, [_JSON_HEADER])
    encoded = [orjson.dumps(job) for job in jobs]
    body = b"".join((b'{"jobs":[', b",".join(encoded), b'],"job":', encoded[0], b"}"))
    return Response(body, 200, [_JSON_HEADER])


def error_body(exc: OjsError, request_id: str) -> dict[str, Any]:
    error = exc.to_wire()
    error["docs_url"] = f"{DOCS_URL}#{exc.code}"
    error["request_id"] = request_id
    return {"error": error}


def error_response(exc: OjsError, request_id: str, status: int | None = None) -> Response:
    headers = list(exc.headers.items())
    if exc.retry_after_s is not None:
        headers.append(("Retry-After", str(exc.retry_after_s)))
    return json_response(error_body(exc, request_id), status or exc.http_status, headers)


def refusal(status: int, message: str, max_body_bytes: int) -> OjsError:
    """The OJS error for a request the HTTP server refused before the app saw it."""
    if status == 413:
        return PayloadTooLarge(message, details={"limit_bytes": max_body_bytes})
    if status == 400:
        return InvalidPayload(message)
    if status == 408:
        return RequestTimeout(message)
    if status == 503:
        return TooManyConnections(message)
    return InvalidRequest(message)


def read_json(request: Request) -> Any:
    """The request body as JSON; OJS errors for a missing, mistyped or malformed body."""
    content_type = request.headers.get("content-type", "")
    if content_type not in ACCEPTED_CONTENT_TYPES:  # the usual case is one exact compare
        media = content_type.split(";", 1)[0].strip().lower()
        if media and media not in ACCEPTED_CONTENT_TYPES:
            raise InvalidPayload(
                f"unsupported Content-Type {content_type!r}; "
                f"use {' or '.join(ACCEPTED_CONTENT_TYPES)}"
            )
    raw = request.body
    if not raw.strip():
        raise InvalidPayload("the request has no body; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(f"the body is not valid JSON: {exc}") from None
    # Fewer opening brackets than the limit cannot nest deeper: skip the walk (the usual case).
    brackets = raw.count(b"[") + raw.count(b"{")
    if brackets > MAX_JSON_DEPTH and nesting_depth(body) > MAX_JSON_DEPTH:
        raise InvalidPayload(f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


def nesting_depth(value: Any) -> int:
    """Depth of nested arrays/objects, without recursion (bodies can be adversarial)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def read_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    if optional and not request.body.strip():
        return {}
    body = read_json(request)
    if not isinstance(body, dict):
        raise InvalidPayload("the body must be a JSON object")
    return body
