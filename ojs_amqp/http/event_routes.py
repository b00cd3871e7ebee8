"""Event endpoints: polling with a cursor, and the live Server-Sent Events stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from ojs_amqp.engine.events import EventFilter
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.errors import InvalidRequest
from ojs_amqp.http.messages import Request, Response, Stream
from ojs_amqp.http.paging import limit_offset
from ojs_amqp.http.responses import json_response
from ojs_amqp.http.routing import BASE, RouteRow

SSE_KEEPALIVE_S = 15.0


class EventRoutes:
    def __init__(self, engine: JobEngine) -> None:
        self.engine = engine

    def routes(self) -> list[RouteRow]:
        return [
            ("GET", f"{BASE}/events", self.events),
            ("GET", f"{BASE}/events/stream", self.event_stream),
        ]

    async def events(self, request: Request) -> Response:
        limit, _ = limit_offset(request)
        found, cursor, has_more = self.engine.events.query(
            _event_filter(request), after=_cursor(request, "after", "cursor"), limit=limit
        )
        return json_response({"events": found, "cursor": str(cursor), "has_more": has_more})

    async def event_stream(self, request: Request) -> Stream:
        """Server-Sent Events: every matching event as it happens (`?queues=`, `?types=`,
        `?job_id=`); reconnecting clients resume with Last-Event-ID."""
        after = _cursor(request, "Last-Event-ID", "after")
        match = _event_filter(request)
        headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                   ("X-Accel-Buffering", "no")]  # fmt: skip
        return Stream(self._sse(match, after), headers)

    async def _sse(self, match: EventFilter, after: int) -> AsyncIterator[bytes]:
        subscription = self.engine.events.subscribe(match, after=after)
        try:
            yield b": connected\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(subscription.feed.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if event is None:
                    yield b"event: gap\ndata: {}\n\n"
                    continue
                data = orjson.dumps(subscription.envelope(event))
                yield b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), data)
        finally:
            subscription.close()

    # --- cron ------------------------------------------------------------------------------


def _csv(request: Request, name: str) -> list[str]:
    return [v for raw in request.query.get(name, []) for v in raw.split(",") if v]


def _event_filter(request: Request) -> EventFilter:
    return EventFilter(
        types=frozenset(_csv(request, "types")),
        queues=frozenset(_csv(request, "queues") + _csv(request, "queue")),
        job_types=frozenset(_csv(request, "job_types")),
        job_id=request.query_value("job_id"),
    )


def _cursor(request: Request, *names: str) -> int:
    """The first of `names` given: capitalised names are headers, the rest query fields."""
    for name in names:
        raw = request.headers.get(name.lower()) if name[0].isupper() else request.query_value(name)
        if raw:
            try:
                return int(raw)
            except ValueError:
                raise InvalidRequest(f"{name} must be an event cursor from this daemon") from None
    return 0
