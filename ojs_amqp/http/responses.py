"""OJS responses: exact content type, OJS-Version, X-Request-Id, and the error envelope."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.errors import InvalidPayload, OjsError, PayloadTooLarge

log = logging.getLogger("ojs_amqp.http")

CONTENT_TYPE = "application/openjobspec+json"
ACCEPTED_CONTENT_TYPES = ("application/openjobspec+json", "application/json")
DOCS_URL = "https://github.com/openjobspec/spec/blob/main/spec/ojs-errors.md"
#: orjson reads 1024 levels but writes only ~254; stored documents add a few levels on top.
MAX_JSON_DEPTH = 128

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.Response(body=orjson.dumps(payload), status=status, headers=headers)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def error_body(exc: OjsError, request_id: str) -> dict[str, Any]:
    error = exc.to_wire()
    error["docs_url"] = f"{DOCS_URL}#{exc.code}"
    error["request_id"] = request_id
    return {"error": error}


def make_middleware(ids: UUIDv7Generator, now_ms: Callable[[], int]) -> Any:
    @web.middleware
    async def ojs_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request.headers.get("X-Request-Id") or f"req_{ids.new(now_ms())}"
        request_id = request_id[:200]
        try:
            response = await handler(request)
        except OjsError as exc:
            response = json_response(error_body(exc, request_id), exc.http_status)
            if exc.retry_after_s is not None:
                response.headers["Retry-After"] = str(exc.retry_after_s)
            for name, value in exc.headers.items():
                response.headers[name] = value
        except web.HTTPRequestEntityTooLarge:
            too_large = PayloadTooLarge(
                f"request body exceeds the limit of {request.client_max_size} bytes",
                details={"limit_bytes": request.client_max_size},
            )
            response = json_response(error_body(too_large, request_id), too_large.http_status)
        except web.HTTPException as exc:
            response = json_response(error_body(_http_error(exc), request_id), exc.status)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            internal = OjsError("internal error; see the daemon's log for request " + request_id)
            response = json_response(error_body(internal, request_id), 500)
        response.headers["OJS-Version"] = "1.0"
        response.headers["X-Request-Id"] = request_id
        return response

    return ojs_middleware


def _http_error(exc: web.HTTPException) -> OjsError:
    err = OjsError(exc.reason or "error")
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "invalid_request")
    err.code = code  # type: ignore[misc]
    return err


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; OJS errors for a missing, mistyped or malformed body."""
    content_type = request.headers.get("Content-Type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media and media not in ACCEPTED_CONTENT_TYPES:
        raise InvalidPayload(
            f"unsupported Content-Type {content_type!r}; use {' or '.join(ACCEPTED_CONTENT_TYPES)}"
        )
    raw = await request.read()
    if not raw.strip():
        raise InvalidPayload("the request has no body; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(f"the body is not valid JSON: {exc}") from None
    if nesting_depth(body) > MAX_JSON_DEPTH:
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


async def read_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    if optional and not (await request.read()).strip():
        return {}
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidPayload("the body must be a JSON object")
    return body
