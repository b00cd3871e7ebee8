"""The routes of the OJS HTTP binding over the JobEngine, and what every answer carries
(OJS-Version, X-Request-Id, the OJS error envelope)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import orjson

from ojs_amqp import __version__
from ojs_amqp.clock import now_ms
from ojs_amqp.core import progress
from ojs_amqp.core.envelope import UNHONOURED_OPTIONS
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.job import Job, JobState, to_wire
from ojs_amqp.core.times import format_ms
from ojs_amqp.engine.cron import CronScheduler, cron_to_wire
from ojs_amqp.engine.events import EventFilter
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.engine.workers import WORKER_STATES
from ojs_amqp.errors import (
    BackendUnavailable,
    BrokerStalled,
    InvalidRequest,
    NoSuchEndpoint,
    NotFound,
    OjsError,
    Unsupported,
)
from ojs_amqp.http import schemas, unsupported
from ojs_amqp.http.auth import authorize
from ojs_amqp.http.responses import (
    CONTENT_TYPE,
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
#: A broker ping slower than this reports the broker `degraded` (every broker wait is bounded).
HEALTH_PING_S = 2.0
Route = Callable[[Request], Awaitable[Response | Stream]]


class HttpApi:
    """One handler per endpoint; `handle` is what the HTTP server calls."""

    def __init__(self, engine: JobEngine, cron: CronScheduler, settings: Settings) -> None:
        self.engine = engine
        self.cron = cron
        self.settings = settings
        self._started = time.monotonic()
        self._ids = UUIDv7Generator(random.Random().getrandbits)  # unique, not secret
        #: Set on SIGTERM, before the server stops: /ready answers 503 from then on.
        self.draining = False
        self.router: Router[Route] = Router()
        for method, path, handler in self._routes():
            self.router.add(method, path, handler)
        # After the served routes, so that a served route always wins over a table row.
        for method, path, feature in unsupported.routes():
            self.router.add(method, path, _refuse_unsupported(feature, method, path))

    def _routes(self) -> list[tuple[str, str, Route]]:
        return [
            ("GET", "/ojs/manifest", self.manifest),
            ("GET", f"{BASE}/health", self.health),
            ("GET", "/health", self.liveness),
            ("GET", "/ready", self.readiness),
            ("POST", f"{BASE}/jobs", self.push),
            ("GET", f"{BASE}/jobs/{{id}}", self.info),
            ("DELETE", f"{BASE}/jobs/{{id}}", self.cancel),
            ("POST", f"{BASE}/jobs/{{id}}/activate", self.activate),
            ("PUT", f"{BASE}/jobs/{{id}}/progress", self.put_progress),
            ("GET", f"{BASE}/jobs/{{id}}/progress", self.get_progress),
            ("POST", f"{BASE}/workers/fetch", self.fetch),
            ("POST", f"{BASE}/workers/ack", self.ack),
            ("POST", f"{BASE}/workers/nack", self.nack),
            ("POST", f"{BASE}/workers/heartbeat", self.heartbeat),
            ("POST", f"{BASE}/workers/{{worker_id}}/directive", self.directive),
            ("POST", f"{BASE}/workers/beat", self.beat),
            ("GET", f"{BASE}/workers/{{worker_id}}/health", self.worker_health),
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
        self._finish(response, request_id)
        return response

    def refused(self, status: int, message: str) -> Response:
        """A request the server answered itself (malformed, too large): still an OJS error."""
        request_id = f"req_{self._ids.new(now_ms())}"
        exc = refusal(status, message, self.settings.max_body_bytes)
        response = error_response(exc, request_id, status)
        self._finish(response, request_id)
        return response

    def _finish(self, response: Response | Stream, request_id: str) -> None:
        """Headers every answer carries; the JSON media type chosen by --response-media-type."""
        media = self.settings.response_media_type
        if media != CONTENT_TYPE:
            response.headers[:] = [
                ("Content-Type", media) if h == ("Content-Type", CONTENT_TYPE) else h
                for h in response.headers
            ]
        response.headers.append(("OJS-Version", "1.0"))
        response.headers.append(("X-Request-Id", request_id))

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
                    **unsupported.capabilities_off(),
                },
                "extensions": {
                    "official": [
                        {"name": "progress", "uri": "urn:ojs:ext:progress"},
                        {"name": "observability", "uri": "urn:ojs:ext:observability"},
                        {"name": "graceful-shutdown", "uri": "urn:ojs:ext:graceful-shutdown"},
                    ],
                    "experimental": [],
                },
                "unsupported": [f.manifest_entry() for f in unsupported.MISSING],
                "unsupported_options": [
                    {"option": name, "feature": feature, "spec": spec}
                    for name, (feature, spec) in UNHONOURED_OPTIONS.items()
                ],
                "limits": {"max_body_bytes": self.settings.max_body_bytes},
            }
        )

    async def health(self, request: Request) -> Response:
        """Overall status and each component's, as `ok` / `degraded` / `unhealthy`
        (ojs-observability §10): 200 unless something is unhealthy, then 503."""
        components = {"broker": await self._broker_health(), "store": await self._store_health()}
        status = _worst(c["status"] for c in components.values())
        return json_response(
            {
                "status": status,
                "version": __version__,
                "uptime_seconds": int(time.monotonic() - self._started),
                "backend": components["broker"],
                "components": components,
                "draining": self.draining,
                "workers": self.engine.workers.counts(),
            },
            503 if status == "unhealthy" else 200,
        )

    async def _broker_health(self) -> dict[str, Any]:
        broker = self.engine.broker
        out: dict[str, Any] = {"type": "rabbitmq", "version": broker.server_version,
                               "connected": broker.connected}  # fmt: skip
        if broker.stall is not None and broker.connected:  # answer now, no ping to wait on
            return {**out, "status": "degraded", "reason": broker.stall}
        try:
            out["latency_ms"] = round(await broker.ping(timeout_s=HEALTH_PING_S), 2)
        except BrokerStalled:  # recorded as a stall: the broker's probe checks the link
            out["status"] = "degraded"
            out["reason"] = broker.stall or (
                f"the broker did not answer a ping within {HEALTH_PING_S:g} s"
            )
            return out
        except Exception as exc:  # any failure to reach the broker: the link is down
            out["status"] = "unhealthy"
            out["error"] = str(exc) or type(exc).__name__
            return out
        stall = broker.stall
        out["status"] = "degraded" if stall else "ok"
        if stall:
            out["reason"] = stall
        return out

    async def _store_health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.engine.store.kind}
        start = time.perf_counter()
        try:
            await self.engine.store.outbox_size()  # one indexed count: the store answers
        except Exception as exc:
            return {**out, "status": "unhealthy", "error": str(exc) or type(exc).__name__}
        return {**out, "status": "ok", "latency_ms": round((time.perf_counter() - start) * 1000, 2)}

    async def liveness(self, request: Request) -> Response:
        """`/health` for load balancers and liveness probes: the process serves requests.
        Deliberately blind to the broker (the daemon reconnects by itself; a restart would
        not bring a broker back): readiness is what follows the broker."""
        return json_response(
            {"status": "ok", "draining": self.draining,
             "uptime_seconds": int(time.monotonic() - self._started)}
        )  # fmt: skip

    async def readiness(self, request: Request) -> Response:
        """`/ready`: 200 once the broker link and the store are up, 503 while either is
        not, and from SIGTERM on (draining), so the pod leaves the Service first."""
        broker = self.engine.broker
        store = await self._store_health()
        reasons = []
        if self.draining:
            reasons.append("the daemon is shutting down")
        if not broker.connected:
            reasons.append("the broker link is down")
        if store["status"] != "ok":
            reasons.append(f"the store does not answer: {store.get('error')}")
        body: dict[str, Any] = {"status": "unhealthy" if reasons else "ok", "ready": not reasons,
                                "broker": "ok" if broker.connected else "unhealthy",
                                "store": store["status"], "draining": self.draining}  # fmt: skip
        if reasons:
            body["reasons"] = reasons
        return json_response(body, 503 if reasons else 200)

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
        # Exactly `text/plain`, as ext-observability checks; Prometheus reads that as its text
        # format 0.0.4 (tests/integration/test_probes.py parses it with prometheus_client).
        return Response(m.render(), headers=[("Content-Type", "text/plain")])

    async def reset(self, request: Request) -> Response:
        if not self.settings.test_mode:
            raise NoSuchEndpoint(
                f"no such endpoint: {request.path}", details={"path": request.path}
            )
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

    async def put_progress(self, request: Request) -> Response:
        """ojs-progress: a report on an active job; on any other job it changes nothing and
        says so (`applied: false`), never an error (PRG-007)."""
        update = progress.parse_update(read_object(request))
        job, applied = await self.engine.report_progress(request.params["id"], update)
        body = _progress_body(job)
        body["applied"] = applied
        if not applied:
            body["reason"] = (
                f"job {job.id} is {job.state.value}: only an active job takes progress"
                if job.state is not JobState.ACTIVE
                else f"job {job.id} is held by another worker"
            )
        return json_response(body, headers=_progress_headers(job))

    async def get_progress(self, request: Request) -> Response:
        job = await self.engine.get(request.params["id"])
        return json_response(_progress_body(job), headers=_progress_headers(job))

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

    async def beat(self, request: Request) -> Response:
        """A worker's beat with its state (ojs-graceful-shutdown): `drain` (or `quiet`,
        `terminate`) stops fetch from handing it new jobs; leases it names are extended."""
        body = schemas.parse(schemas.BeatIn, read_object(request))
        if body.state is not None and body.state not in WORKER_STATES:
            raise InvalidRequest(
                f"state must be one of {', '.join(WORKER_STATES)}", details={"field": "state"}
            )
        state, directive = self.engine.worker_beat(body.worker_id, body.state, body.job_count())
        extended: list[str] = []
        if body.job_ids():
            directive, extended = await self.engine.heartbeat(
                body.worker_id, body.job_ids(), body.visibility_timeout_ms
            )
        return json_response(
            {
                "acknowledged": True,
                "worker_id": body.worker_id,
                "state": state,
                "directive": directive,
                "jobs_extended": extended,
                "server_time": format_ms(now_ms()),
            }
        )

    async def worker_health(self, request: Request) -> Response:
        """A worker's last announced state: 200 while it runs, 503 once it is quiet,
        draining or terminating (it takes no new work); 404 for a worker not seen lately."""
        worker_id = request.params["worker_id"]
        info = self.engine.workers.get(worker_id)
        if info is None:
            raise NotFound(
                f"no worker {worker_id!r} has been seen lately (fetch, heartbeat or beat)",
                details={"resource_type": "worker", "resource_id": worker_id},
            )
        running = info.state == "running"
        return json_response(
            {"worker_id": worker_id, "state": info.state,
             "status": "ok" if running else "draining",
             "last_seen_at": format_ms(info.last_seen_ms), "active_jobs": info.active_jobs},
            200 if running else 503,
        )  # fmt: skip

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
        return json_response(_one_cron(cron), 201 if created else 200)

    async def list_crons(self, request: Request) -> Response:
        limit, offset = _page(request)
        crons = await self.cron.list()
        page = [cron_to_wire(c) for c in crons[offset : offset + limit]]
        return json_response(
            {"crons": page, "cron_jobs": page, "pagination": _pagination(len(crons), limit, offset)}
        )

    async def get_cron(self, request: Request) -> Response:
        return json_response(_one_cron(await self.cron.get(request.params["name"])))

    async def delete_cron(self, request: Request) -> Response:
        name = request.params["name"]
        cron = await self.cron.delete(name)
        return json_response({**_one_cron(cron), "deleted": True, "name": name})


def _one_cron(cron: dict[str, Any]) -> dict[str, Any]:
    """`cron` (the OpenAPI document) and `cron_job` (the HTTP binding §13): one object."""
    wire = cron_to_wire(cron)
    return {"cron": wire, "cron_job": wire}


def _refuse_unsupported(feature: unsupported.MissingFeature, method: str, path: str) -> Route:
    """The handler of a route in the unsupported table: 422 `unsupported`, naming it."""
    message = feature.message(method, path)

    async def refuse(request: Request) -> Response:
        raise Unsupported(message, details={**feature.details(), "path": request.path})

    return refuse


def _worst(statuses: Iterable[str]) -> str:
    order = ("ok", "degraded", "unhealthy")
    return max(statuses, key=order.index, default="ok")


def _progress_body(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "state": job.state.value, **progress.to_wire(job.progress)}


def _progress_headers(job: Job) -> list[tuple[str, str]]:
    headers = [("Cache-Control", "no-cache")]
    value = job.progress.get("progress") if job.progress else None
    if value is not None:
        headers.append(("X-OJS-Progress", f"{value:g}"))
    return headers


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
