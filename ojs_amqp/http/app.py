"""The routes of the OJS HTTP binding over the JobEngine, and what every answer carries
(OJS-Version, X-Request-Id, the OJS error envelope)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from ojs_amqp import __version__
from ojs_amqp.clock import now_ms
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.job import JobState, to_wire
from ojs_amqp.core.times import format_ms
from ojs_amqp.engine.cron import CronScheduler, cron_to_wire
from ojs_amqp.engine.events import EventFilter
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.errors import BackendUnavailable, InvalidRequest, NotFound, OjsError
from ojs_amqp.http import schemas
from ojs_amqp.http.auth import authorize
from ojs_amqp.http.responses import (
    error_response,
    fetched_response,
    json_response,
    read_object,
    refusal,
)
from ojs_amqp.http.routing import Router
from ojs_amqp.http.server import Request, Response, Stream
from ojs_amqp.settings import Settings

log = logging.getLogger("ojs_amqp.http")

BASE = "/ojs/v1"
SSE_KEEPALIVE_S = 15.0
Route = Callable[[Request], Awaitable[Response | Stream]]


class HttpApi:
    """One handler per endpoint; `handle` is what the HTTP server calls."""

    def __init__(self, engine: JobEngine, cron: CronScheduler, settings: Settings) -> None:
        self.engine = engine
        self.cron = cron
        self.settings = settings
        self._started = time.monotonic()
        self._ids = UUIDv7Generator(random.Random().getrandbits)  # unique, not secret
        self.router: Router[Route] = Router()
        for method, path, handler in self._routes():
            self.router.add(method, path, handler)

    def _routes(self) -> list[tuple[str, str, Route]]:
        return [
            ("GET", "/ojs/manifest", self.manifest),
            ("GET", f"{BASE}/health", self.health),
            ("POST", f"{BASE}/jobs", self.push),
            ("GET", f"{BASE}/jobs/{{id}}", self.info),
            ("DELETE", f"{BASE}/jobs/{{id}}", self.cancel),
            ("POST", f"{BASE}/jobs/{{id}}/activate", self.activate),
            ("POST", f"{BASE}/workers/fetch", self.fetch),
            ("POST", f"{BASE}/workers/ack", self.ack),
            ("POST", f"{BASE}/workers/nack", self.nack),
            ("POST", f"{BASE}/workers/heartbeat", self.heartbeat),
            ("POST", f"{BASE}/workers/{{worker_id}}/directive", self.directive),
            ("GET", f"{BASE}/queues", self.queues),
            ("DELETE", f"{BASE}/queues/{{name}}", self.delete_queue),
            ("GET", f"{BASE}/dead-letter", self.dead_letters),
            ("POST", f"{BASE}/dead-letter/{{id}}/retry", self.retry_dead_letter),
            ("DELETE", f"{BASE}/dead-letter/{{id}}", self.delete_dead_letter),
            ("GET", f"{BASE}/events", self.events),
            ("GET", f"{BASE}/events/stream", self.event_stream),
            ("POST", f"{BASE}/cron", self.register_cron),
            ("GET", f"{BASE}/cron", self.list_crons),
            ("GET", f"{BASE}/cron/{{name}}", self.get_cron),
            ("DELETE", f"{BASE}/cron/{{name}}", self.delete_cron),
            ("GET", "/metrics", self.metrics),
            ("POST", f"{BASE}/admin/reset", self.reset),
        ]

    # --- what every request goes through ---------------------------------------------------

    def _request_id(self, request: Request) -> str:
        given = request.headers.get("x-request-id")
        return given[:200] if given else f"req_{self._ids.new(now_ms())}"

    async def handle(self, request: Request) -> Response | Stream:
        request_id = self._request_id(request)
        try:
            handler, request.params = self.router.resolve(request.method, request.path)
            if self.settings.auth_tokens:
                header = request.headers.get("authorization", "")
                authorize(self.settings.auth_tokens, request.method, request.path, header)
            response = await handler(request)
        except OjsError as exc:
            response = error_response(exc, request_id)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            internal = OjsError("internal error; see the daemon's log for request " + request_id)
            response = error_response(internal, request_id)
        response.headers.append(("OJS-Version", "1.0"))
        response.headers.append(("X-Request-Id", request_id))
        return response

    def refused(self, status: int, message: str) -> Response:
        """A request the server answered itself (malformed, too large): still an OJS error."""
        request_id = f"req_{self._ids.new(now_ms())}"
        exc = refusal(status, message, self.settings.max_body_bytes)
        response = error_response(exc, request_id, status)
        response.headers.append(("OJS-Version", "1.0"))
        response.headers.append(("X-Request-Id", request_id))
        return response

    # --- system ----------------------------------------------------------------------------

    async def manifest(self, request: Request) -> Response:
        return json_response(
            {
                "specversion": "1.0",
                "ojs_version": "1.0",
                "implementation": {
                    "name": "ojs-amqp",
                    "version": __version__,
                    "language": "python",
                    "homepage": "https://github.com/ojs-amqp/ojs-amqp",
                },
                "conformance_level": 2,
                "conformance_tier": "runtime",
                "protocols": ["http", "amqp"],  # the native binding: docs/amqp-binding.md
                "backend": "rabbitmq",
                "capabilities": {
                    "batch_enqueue": False,
                    "cron_jobs": True,
                    "dead_letter": True,
                    "delayed_jobs": True,
                    "job_ttl": True,
                    "priority_queues": True,
                    "rate_limiting": False,
                    "schema_validation": False,
                    "unique_jobs": False,
                    "workflows": False,
                    "pause_resume": False,
                },
                "extensions": {"official": [], "experimental": []},
                "limits": {"max_body_bytes": self.settings.max_body_bytes},
            }
        )

    async def health(self, request: Request) -> Response:
        broker = self.engine.broker
        uptime = int(time.monotonic() - self._started)
        backend: dict[str, Any] = {"type": "rabbitmq", "version": broker.server_version}
        try:
            backend["latency_ms"] = round(await broker.ping(), 2)
            backend["status"] = "connected"
            status, code = "ok", 200
        except Exception as exc:  # any failure to reach the broker means degraded
            backend["status"] = "disconnected"
            backend["error"] = str(exc) or type(exc).__name__
            status, code = "degraded", 503
        return json_response(
            {"status": status, "version": __version__, "uptime_seconds": uptime,
             "backend": backend},
            code,
        )  # fmt: skip

    async def metrics(self, request: Request) -> Response:
        engine = self.engine
        m = engine.metrics
        m.queue_depth.clear()
        for (queue, state), count in (await engine.store.count_by_state()).items():
            m.queue_depth.labels(queue, state).set(count)
        m.outbox_pending.set(await engine.store.outbox_size())
        m.connections_active.set(engine.broker.open_connections())
        m.channels_active.set(engine.broker.open_channels())
        # Cleared first: a queue no longer consumed for HTTP workers drops out of these.
        m.messages_unacked.clear()
        for queue, holder, count in engine.unacked_deliveries():
            m.messages_unacked.labels(queue, holder).set(count)
        m.consumer_utilization.clear()
        for queue, ratio in engine.consumer_utilization().items():
            m.consumer_utilization.labels(queue).set(ratio)
        return Response(m.render(), headers=[("Content-Type", "text/plain; charset=utf-8")])

    async def reset(self, request: Request) -> Response:
        if not self.settings.test_mode:
            raise NotFound(f"no such endpoint: {request.path}", details={"path": request.path})
        if not self.engine.broker.connected:
            raise BackendUnavailable("the broker is not connected")
        await self.engine.reset()
        return json_response({"reset": True})

    # --- jobs ------------------------------------------------------------------------------

    async def push(self, request: Request) -> Response:
        body = _with_trace_context(request, read_object(request))
        job = await self.engine.push(body)
        return json_response({"job": to_wire(job)}, 201, [("Location", f"{BASE}/jobs/{job.id}")])

    async def info(self, request: Request) -> Response:
        return json_response({"job": to_wire(await self.engine.get(request.params["id"]))})

    async def cancel(self, request: Request) -> Response:
        job = await self.engine.cancel(request.params["id"])
        return json_response({"job": to_wire(job)})

    async def activate(self, request: Request) -> Response:
        job = await self.engine.activate(request.params["id"])
        return json_response({"job": {**to_wire(job), "previous_state": "pending"}})

    # --- workers ---------------------------------------------------------------------------

    async def fetch(self, request: Request) -> Response:
        body = schemas.parse(schemas.FetchIn, read_object(request))
        jobs = await self.engine.fetch(
            body.queues, body.count, body.worker_id, body.visibility_timeout_ms
        )
        return fetched_response([to_wire(j) for j in jobs])

    async def ack(self, request: Request) -> Response:
        body = schemas.parse(schemas.AckIn, read_object(request))
        job = await self.engine.ack(body.job_id, body.result, body.worker_id)
        return json_response(
            {
                "acknowledged": True,
                "id": job.id,
                "job_id": job.id,
                "state": job.state.value,
                "attempt": job.attempt,
                "completed_at": format_ms(job.completed_at_ms or 0),
            }
        )

    async def nack(self, request: Request) -> Response:
        body = schemas.parse(schemas.NackIn, read_object(request))
        job = await self.engine.nack(body.job_id, body.error.report(), body.worker_id, body.requeue)
        wire = to_wire(job)
        out = {"id": job.id, "job_id": job.id, "state": job.state.value, "attempt": job.attempt,
               "max_attempts": job.max_attempts}  # fmt: skip
        for key in ("next_attempt_at", "retry_delay_ms", "discarded_at", "completed_at", "error"):
            if key in wire and job.state is not JobState.AVAILABLE:
                out[key] = wire[key]
        return json_response(out)

    async def heartbeat(self, request: Request) -> Response:
        body = schemas.parse(schemas.HeartbeatIn, read_object(request))
        state, extended = await self.engine.heartbeat(
            body.worker_id, body.job_ids(), body.visibility_timeout_ms
        )
        return json_response(
            {
                "state": state,
                "directive": state,
                "jobs_extended": extended,
                "server_time": format_ms(now_ms()),
            }
        )

    async def directive(self, request: Request) -> Response:
        body = schemas.parse(schemas.DirectiveIn, read_object(request))
        worker_id = request.params["worker_id"]
        self.engine.set_worker_directive(worker_id, body.directive)
        return json_response({"worker_id": worker_id, "directive": body.directive})

    # --- queues and dead letters -----------------------------------------------------------

    async def queues(self, request: Request) -> Response:
        limit, offset = _page(request)
        names = await self.engine.queue_names()
        page = names[offset : offset + limit]
        return json_response(
            {
                "queues": [
                    {"name": n, "status": "active", "created_at": format_ms(created)}
                    for n, created in page
                ],
                "pagination": _pagination(len(names), limit, offset),
            }
        )

    async def delete_queue(self, request: Request) -> Response:
        """Admin: remove a queue's broker queues and store rows (`?force=true` cancels its
        unfinished jobs first; without it a queue holding any is refused with 409)."""
        raw = (request.query_value("force", "false") or "false").lower()
        if raw not in ("true", "false", "1", "0"):
            raise InvalidRequest("force must be true or false", details={"field": "force"})
        if not self.engine.broker.connected:
            raise BackendUnavailable("the broker is not connected")
        name = request.params["name"]
        return json_response(await self.engine.delete_queue(name, raw in ("true", "1")))

    async def dead_letters(self, request: Request) -> Response:
        limit, offset = _page(request)
        queue = request.query_value("queue")
        jobs, total = await self.engine.dead_letters(queue, limit, offset)
        return json_response(
            {"jobs": [to_wire(j) for j in jobs], "pagination": _pagination(total, limit, offset)}
        )

    async def retry_dead_letter(self, request: Request) -> Response:
        job = await self.engine.retry_dead_letter(request.params["id"])
        return json_response({"job": {**to_wire(job), "re_enqueued_at": format_ms(now_ms())}})

    async def delete_dead_letter(self, request: Request) -> Response:
        job_id = request.params["id"]
        await self.engine.delete_dead_letter(job_id)
        return json_response({"deleted": True, "job_id": job_id})

    # --- events ----------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        limit, _ = _page(request)
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

    async def register_cron(self, request: Request) -> Response:
        cron, created = await self.cron.register(read_object(request))
        return json_response({"cron": cron_to_wire(cron)}, 201 if created else 200)

    async def list_crons(self, request: Request) -> Response:
        crons = [cron_to_wire(c) for c in await self.cron.list()]
        return json_response({"crons": crons, "pagination": _pagination(len(crons), len(crons), 0)})

    async def get_cron(self, request: Request) -> Response:
        return json_response({"cron": cron_to_wire(await self.cron.get(request.params["name"]))})

    async def delete_cron(self, request: Request) -> Response:
        name = request.params["name"]
        cron = await self.cron.delete(name)
        return json_response({"cron": cron_to_wire(cron), "deleted": True, "name": name})


def _with_trace_context(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """W3C trace context from the request headers goes into meta (unless the body sets it),
    so it travels with the job: in every broker copy's headers and across retries."""
    meta = body.get("meta")
    if meta is not None and not isinstance(meta, dict):
        return body  # the envelope parser will refuse it
    headers = request.headers
    carried = {k: headers[k] for k in ("traceparent", "tracestate") if k in headers}
    if not carried:
        return body
    return {**body, "meta": {**carried, **(meta or {})}}


def _page(request: Request) -> tuple[int, int]:
    try:
        limit = int(request.query_value("limit", "50") or 50)
        offset = int(request.query_value("offset", request.query_value("cursor", "0")) or 0)
    except ValueError:
        raise InvalidRequest("limit and offset must be integers") from None
    return max(1, min(limit, 200)), max(0, offset)


def _pagination(total: int, limit: int, offset: int) -> dict[str, Any]:
    has_more = offset + limit < total
    return {"total": total, "limit": limit, "offset": offset, "has_more": has_more,
            "next_cursor": str(offset + limit) if has_more else None}  # fmt: skip


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
