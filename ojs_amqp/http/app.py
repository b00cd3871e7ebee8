"""The aiohttp application: routes of the OJS HTTP binding over the JobEngine."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from ojs_amqp import __version__
from ojs_amqp.clock import now_ms
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.job import JobState, to_wire
from ojs_amqp.core.times import format_ms
from ojs_amqp.engine.cron import CronScheduler, cron_to_wire
from ojs_amqp.engine.events import EventFilter
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.errors import BackendUnavailable, InvalidRequest, NotFound
from ojs_amqp.http import schemas
from ojs_amqp.http.auth import make_auth_middleware
from ojs_amqp.http.responses import json_response, make_middleware, read_object
from ojs_amqp.settings import Settings

ENGINE = web.AppKey("engine", JobEngine)
CRON = web.AppKey("cron", CronScheduler)
SETTINGS = web.AppKey("settings", Settings)
STARTED = web.AppKey("started", float)
STREAMS = web.AppKey("streams", set[asyncio.Task[Any]])
BASE = "/ojs/v1"


def create_app(engine: JobEngine, cron: CronScheduler, settings: Settings) -> web.Application:
    middlewares = [make_middleware(UUIDv7Generator(), now_ms)]
    if settings.auth_tokens:
        middlewares.append(make_auth_middleware(settings.auth_tokens))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[ENGINE] = engine
    app[CRON] = cron
    app[SETTINGS] = settings
    app[STARTED] = time.monotonic()
    app[STREAMS] = set()
    app.on_shutdown.append(_close_streams)
    r = app.router
    r.add_get("/ojs/manifest", manifest)
    r.add_get(f"{BASE}/health", health)
    r.add_post(f"{BASE}/jobs", push)
    r.add_get(f"{BASE}/jobs/{{id}}", info)
    r.add_delete(f"{BASE}/jobs/{{id}}", cancel)
    r.add_post(f"{BASE}/jobs/{{id}}/activate", activate)
    r.add_post(f"{BASE}/workers/fetch", fetch)
    r.add_post(f"{BASE}/workers/ack", ack)
    r.add_post(f"{BASE}/workers/nack", nack)
    r.add_post(f"{BASE}/workers/heartbeat", heartbeat)
    r.add_post(f"{BASE}/workers/{{worker_id}}/directive", directive)
    r.add_get(f"{BASE}/queues", queues)
    r.add_get(f"{BASE}/dead-letter", dead_letters)
    r.add_post(f"{BASE}/dead-letter/{{id}}/retry", retry_dead_letter)
    r.add_delete(f"{BASE}/dead-letter/{{id}}", delete_dead_letter)
    r.add_get(f"{BASE}/events", events)
    r.add_get(f"{BASE}/events/stream", event_stream)
    r.add_post(f"{BASE}/cron", register_cron)
    r.add_get(f"{BASE}/cron", list_crons)
    r.add_get(f"{BASE}/cron/{{name}}", get_cron)
    r.add_delete(f"{BASE}/cron/{{name}}", delete_cron)
    r.add_get("/metrics", metrics)
    r.add_post(f"{BASE}/admin/reset", reset)
    return app


def _engine(request: web.Request) -> JobEngine:
    return request.app[ENGINE]


async def manifest(request: web.Request) -> web.Response:
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
            "limits": {"max_body_bytes": request.app[SETTINGS].max_body_bytes},
        }
    )


async def health(request: web.Request) -> web.Response:
    engine = _engine(request)
    uptime = int(time.monotonic() - request.app[STARTED])
    backend: dict[str, Any] = {"type": "rabbitmq", "version": engine.broker.server_version}
    try:
        backend["latency_ms"] = round(await engine.broker.ping(), 2)
        backend["status"] = "connected"
        status, code = "ok", 200
    except Exception as exc:  # any failure to reach the broker means degraded
        backend["status"] = "disconnected"
        backend["error"] = str(exc) or type(exc).__name__
        status, code = "degraded", 503
    return json_response(
        {"status": status, "version": __version__, "uptime_seconds": uptime, "backend": backend},
        code,
    )


def _with_trace_context(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """W3C trace context from the request headers goes into meta (unless the body sets it),
    so it travels with the job: in every broker copy's headers and across retries."""
    meta = body.get("meta")
    if meta is not None and not isinstance(meta, dict):
        return body  # the envelope parser will refuse it
    carried = {k: request.headers[k] for k in ("traceparent", "tracestate") if k in request.headers}
    if not carried:
        return body
    return {**body, "meta": {**carried, **(meta or {})}}


async def push(request: web.Request) -> web.Response:
    body = _with_trace_context(request, await read_object(request))
    job = await _engine(request).push(body)
    return json_response({"job": to_wire(job)}, 201, headers={"Location": f"{BASE}/jobs/{job.id}"})


async def info(request: web.Request) -> web.Response:
    return json_response({"job": to_wire(await _engine(request).get(request.match_info["id"]))})


async def cancel(request: web.Request) -> web.Response:
    job = await _engine(request).cancel(request.match_info["id"])
    return json_response({"job": to_wire(job)})


async def activate(request: web.Request) -> web.Response:
    job = await _engine(request).activate(request.match_info["id"])
    return json_response({"job": {**to_wire(job), "previous_state": "pending"}})


async def fetch(request: web.Request) -> web.Response:
    body = schemas.parse(schemas.FetchIn, await read_object(request))
    jobs = await _engine(request).fetch(
        body.queues, body.count, body.worker_id, body.visibility_timeout_ms
    )
    wire = [to_wire(j) for j in jobs]
    payload: dict[str, Any] = {"jobs": wire}
    if wire:
        payload["job"] = wire[0]
    return json_response(payload)


async def ack(request: web.Request) -> web.Response:
    body = schemas.parse(schemas.AckIn, await read_object(request))
    job = await _engine(request).ack(body.job_id, body.result, body.worker_id)
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


async def nack(request: web.Request) -> web.Response:
    body = schemas.parse(schemas.NackIn, await read_object(request))
    job = await _engine(request).nack(
        body.job_id, body.error.report(), body.worker_id, body.requeue
    )
    wire = to_wire(job)
    out = {"id": job.id, "job_id": job.id, "state": job.state.value, "attempt": job.attempt,
           "max_attempts": job.max_attempts}  # fmt: skip
    for key in ("next_attempt_at", "retry_delay_ms", "discarded_at", "completed_at", "error"):
        if key in wire and job.state is not JobState.AVAILABLE:
            out[key] = wire[key]
    return json_response(out)


async def heartbeat(request: web.Request) -> web.Response:
    body = schemas.parse(schemas.HeartbeatIn, await read_object(request))
    state, extended = await _engine(request).heartbeat(
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


async def directive(request: web.Request) -> web.Response:
    body = schemas.parse(schemas.DirectiveIn, await read_object(request))
    worker_id = request.match_info["worker_id"]
    _engine(request).set_worker_directive(worker_id, body.directive)
    return json_response({"worker_id": worker_id, "directive": body.directive})


def _page(request: web.Request) -> tuple[int, int]:
    try:
        limit = int(request.query.get("limit", "50"))
        offset = int(request.query.get("offset", request.query.get("cursor", "0")) or 0)
    except ValueError:
        raise InvalidRequest("limit and offset must be integers") from None
    return max(1, min(limit, 200)), max(0, offset)


def _pagination(total: int, limit: int, offset: int) -> dict[str, Any]:
    has_more = offset + limit < total
    return {"total": total, "limit": limit, "offset": offset, "has_more": has_more,
            "next_cursor": str(offset + limit) if has_more else None}  # fmt: skip


async def queues(request: web.Request) -> web.Response:
    engine = _engine(request)
    limit, offset = _page(request)
    names = await engine.queue_names()
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


async def dead_letters(request: web.Request) -> web.Response:
    limit, offset = _page(request)
    jobs, total = await _engine(request).dead_letters(request.query.get("queue"), limit, offset)
    return json_response(
        {"jobs": [to_wire(j) for j in jobs], "pagination": _pagination(total, limit, offset)}
    )


async def retry_dead_letter(request: web.Request) -> web.Response:
    job = await _engine(request).retry_dead_letter(request.match_info["id"])
    return json_response({"job": {**to_wire(job), "re_enqueued_at": format_ms(now_ms())}})


async def delete_dead_letter(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    await _engine(request).delete_dead_letter(job_id)
    return json_response({"deleted": True, "job_id": job_id})


def _csv(request: web.Request, name: str) -> list[str]:
    return [v for raw in request.query.getall(name, []) for v in raw.split(",") if v]


def _event_filter(request: web.Request) -> EventFilter:
    return EventFilter(
        types=frozenset(_csv(request, "types")),
        queues=frozenset(_csv(request, "queues") + _csv(request, "queue")),
        job_types=frozenset(_csv(request, "job_types")),
        job_id=request.query.get("job_id"),
    )


def _cursor(request: web.Request, *names: str) -> int:
    for name in names:
        raw = request.headers.get(name) if name[0].isupper() else request.query.get(name)
        if raw:
            try:
                return int(raw)
            except ValueError:
                raise InvalidRequest(f"{name} must be an event cursor from this daemon") from None
    return 0


async def events(request: web.Request) -> web.Response:
    limit, _ = _page(request)
    found, cursor, has_more = _engine(request).events.query(
        _event_filter(request), after=_cursor(request, "after", "cursor"), limit=limit
    )
    return json_response({"events": found, "cursor": str(cursor), "has_more": has_more})


SSE_KEEPALIVE_S = 15.0


async def event_stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: every matching event as it happens (`?queues=`, `?types=`,
    `?job_id=`); reconnecting clients resume with Last-Event-ID."""
    log = _engine(request).events
    after = _cursor(request, "Last-Event-ID", "after")
    subscription = log.subscribe(_event_filter(request), after=after)
    task = asyncio.current_task()
    if task is not None:
        request.app[STREAMS].add(task)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })  # fmt: skip
    try:
        await response.prepare(request)
        await response.write(b": connected\n\n")
        while True:
            try:
                event = await asyncio.wait_for(subscription.feed.get(), SSE_KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if event is None:
                await response.write(b"event: gap\ndata: {}\n\n")
                continue
            data = orjson.dumps(subscription.envelope(event))
            await response.write(
                b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), data)
            )
    except ConnectionResetError:
        pass  # the client went away
    finally:
        subscription.close()
        if task is not None:
            request.app[STREAMS].discard(task)
    return response


async def _close_streams(app: web.Application) -> None:
    """Open SSE streams would hold shutdown up until their next keep-alive: end them now."""
    streams: set[asyncio.Task[Any]] = app[STREAMS]
    for task in tuple(streams):
        task.cancel()


async def register_cron(request: web.Request) -> web.Response:
    cron, created = await request.app[CRON].register(await read_object(request))
    return json_response({"cron": cron_to_wire(cron)}, 201 if created else 200)


async def list_crons(request: web.Request) -> web.Response:
    crons = [cron_to_wire(c) for c in await request.app[CRON].list()]
    return json_response({"crons": crons, "pagination": _pagination(len(crons), len(crons), 0)})


async def get_cron(request: web.Request) -> web.Response:
    return json_response(
        {"cron": cron_to_wire(await request.app[CRON].get(request.match_info["name"]))}
    )


async def delete_cron(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    cron = await request.app[CRON].delete(name)
    return json_response({"cron": cron_to_wire(cron), "deleted": True, "name": name})


async def metrics(request: web.Request) -> web.Response:
    engine = _engine(request)
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
    return web.Response(body=m.render(), content_type="text/plain", charset="utf-8")


async def reset(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].test_mode:
        raise NotFound("not found")
    engine = _engine(request)
    if not engine.broker.connected:
        raise BackendUnavailable("the broker is not connected")
    await engine.reset()
    return json_response({"reset": True})
