"""`GET /ojs/v1/events?type&since&page&per_page` → `{items, pagination}`, newest first: the
official admin UI's shape of the event log (the spec's `?types&after&limit` → `{events,
cursor}` is answered by the HTTP app as before; a `page` or `per_page` picks this one)."""

from __future__ import annotations

from ojs_amqp.core.times import format_ms
from ojs_amqp.engine.events import EventFilter
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.http.admin import params
from ojs_amqp.http.responses import json_response
from ojs_amqp.http.server import Request, Response

#: More than the event log holds (engine/events.py keeps the latest 10,000).
SCAN_LIMIT = 100_000


def wants_pages(request: Request) -> bool:
    return "page" in request.query or "per_page" in request.query


def event_page(engine: JobEngine, request: Request) -> Response:
    page = params.page_of(request)
    kind = request.query_value("type")
    since_ms = params.job_query(params.query_fields(request, ("since",))).since_ms
    found, _, _ = engine.events.query(
        EventFilter(types=frozenset([kind]) if kind else frozenset()), limit=SCAN_LIMIT
    )
    if since_ms is not None:  # one formatter writes every `time`: text order is time order
        since = format_ms(since_ms)
        found = [e for e in found if e["time"] >= since]
    found.reverse()
    items = [{**e, "timestamp": e["time"]} for e in found[page.offset : page.offset + page.limit]]
    return json_response({"items": items, "pagination": page.wire(len(found))})
