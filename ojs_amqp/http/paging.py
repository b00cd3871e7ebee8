"""`limit`/`offset` paging of list endpoints (at most 200 a page), shared by the route modules."""

from __future__ import annotations

from typing import Any

from ojs_amqp.errors import InvalidRequest
from ojs_amqp.http.messages import Request


def limit_offset(request: Request) -> tuple[int, int]:
    try:
        limit = int(request.query_value("limit", "50") or 50)
        offset = int(request.query_value("offset", request.query_value("cursor", "0")) or 0)
    except ValueError:
        raise InvalidRequest("limit and offset must be integers") from None
    return max(1, min(limit, 200)), max(0, offset)


def pagination(total: int, limit: int, offset: int) -> dict[str, Any]:
    has_more = offset + limit < total
    return {"total": total, "limit": limit, "offset": offset, "has_more": has_more,
            "next_cursor": str(offset + limit) if has_more else None}  # fmt: skip
