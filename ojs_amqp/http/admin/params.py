"""What admin requests say: pagination (`page`/`per_page` as the spec and the official UI
send it, or `limit`/`offset` as the OpenAPI document does), job filters from a query
string or a bulk body, and the `confirm: true` interlock. Bad values are 400s naming the
field."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ojs_amqp.core.job import JobState
from ojs_amqp.core.times import parse_rfc3339_ms
from ojs_amqp.errors import InvalidRequest
from ojs_amqp.http.server import Request
from ojs_amqp.store.admin_queries import JobQuery

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
STATES = tuple(s.value for s in JobState)


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    offset: int

    def wire(self, total: int) -> dict[str, Any]:
        """Both vocabularies, so either kind of client reads its own."""
        has_more = self.offset + self.limit < total
        return {"total": total, "page": self.offset // self.limit + 1, "per_page": self.limit,
                "limit": self.limit, "offset": self.offset, "has_more": has_more}  # fmt: skip


def _int(request: Request, name: str, default: int, low: int) -> int:
    raw = request.query_value(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", details={"field": name}) from None
    if value < low:
        raise InvalidRequest(f"{name} must be at least {low}", details={"field": name})
    return value


def page_of(request: Request) -> Page:
    if "limit" in request.query or "offset" in request.query:
        if "page" in request.query:
            raise InvalidRequest("use page/per_page or limit/offset, not both")
        limit = min(_int(request, "limit", DEFAULT_PER_PAGE, 1), MAX_PER_PAGE)
        return Page(limit, _int(request, "offset", 0, 0))
    per_page = min(_int(request, "per_page", DEFAULT_PER_PAGE, 1), MAX_PER_PAGE)
    return Page(per_page, (_int(request, "page", 1, 1) - 1) * per_page)


def _time(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be an RFC 3339 time", details={"field": name})
    try:
        return parse_rfc3339_ms(value)
    except (ValueError, InvalidRequest):
        raise InvalidRequest(
            f"{name} must be an RFC 3339 time such as 2026-02-13T00:00:00Z",
            details={"field": name, "value": value},
        ) from None


def _states(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InvalidRequest("state must be a state name or a list of them")
    unknown = [s for s in items if s not in STATES]
    if unknown:
        raise InvalidRequest(
            f"unknown state {unknown[0]!r}; one of {', '.join(STATES)}",
            details={"field": "state", "value": unknown[0]},
        )
    return tuple(dict.fromkeys(items))


def job_query(fields: dict[str, Any], *, dead_letter: bool = False) -> JobQuery:
    """A filter from query fields or a bulk body's `filter`: queue, state (one, a comma
    list or a list), type (exact, or a prefix ending in `*`), since, until, ids."""
    unknown = set(fields) - {"queue", "state", "states", "type", "since", "until", "ids"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(
            f"unknown filter field {name!r}; use queue, state, type, since, until or ids",
            details={"field": name},
        )
    queue, kind = fields.get("queue") or None, fields.get("type") or None
    for name, value in (("queue", queue), ("type", kind)):
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{name} must be a string", details={"field": name})
    ids = fields.get("ids") or ()
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
        raise InvalidRequest("ids must be a list of job ids", details={"field": "ids"})
    prefix = None
    if kind is not None and kind.endswith("*"):
        prefix, kind = kind[:-1], None
    return JobQuery(
        queue=queue,
        states=_states(fields.get("state", fields.get("states"))),
        type=kind,
        type_prefix=prefix,
        since_ms=_time(fields.get("since"), "since"),
        until_ms=_time(fields.get("until"), "until"),
        dead_letter=dead_letter,
        ids=tuple(ids),
    )


def query_fields(request: Request, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: request.query_value(n) for n in names if request.query_value(n)}


def sorted_query(request: Request, query: JobQuery) -> tuple[JobQuery, bool]:
    """The query with its order, and whether newest first: `sort` is created_at, or
    scheduled_at for scheduled jobs (the orders the indexes keep); `order` asc or desc."""
    sort = request.query_value("sort") or "created_at"
    if sort == "scheduled_at" and query.states == ("scheduled",):
        query = replace(query, by_due_time=True)
    elif sort != "created_at":
        raise InvalidRequest(
            "sort must be created_at, or scheduled_at with state=scheduled (the orders the "
            "indexes keep)",
            details={"field": "sort", "value": sort},
        )
    order = (request.query_value("order") or "desc").lower()
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc", details={"field": "order"})
    return query, order == "desc"


def confirmed(body: dict[str, Any], action: str) -> None:
    """Destructive calls need `confirm: true` (ojs-admin-api §4, §6.5): else 400."""
    if body.get("confirm") is not True:
        raise InvalidRequest(
            f'{action} needs "confirm": true in the body (a safety interlock)',
            details={"field": "confirm"},
        )
