"""The routes of the OJS HTTP binding over the JobEngine, and what every answer carries
(OJS-Version, X-Request-Id, the OJS error envelope)."""

from __future__ import annotations

import logging
import random
from typing import TypeVar

from ojs_amqp.clock import now_ms
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.dashboard import routes as dashboard
from ojs_amqp.engine.cron import CronScheduler
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.errors import OjsError, Unsupported
from ojs_amqp.http import unsupported
from ojs_amqp.http.admin import admin_routes
from ojs_amqp.http.auth import authorize
from ojs_amqp.http.cron_routes import CronRoutes
from ojs_amqp.http.event_routes import EventRoutes
from ojs_amqp.http.job_routes import JobRoutes
from ojs_amqp.http.messages import Request, Response, Stream
from ojs_amqp.http.queue_routes import QueueRoutes
from ojs_amqp.http.responses import CONTENT_TYPE, error_response, refusal
from ojs_amqp.http.routing import Route, Router, RouteTable
from ojs_amqp.http.system_routes import SystemRoutes
from ojs_amqp.http.worker_routes import WorkerRoutes
from ojs_amqp.settings import Settings

log = logging.getLogger("ojs_amqp.http")

T = TypeVar("T", bound=RouteTable)


class HttpApi:
    """The app factory: mounts every route table on one router; `handle` is what the HTTP
    server calls for each request (route, authorize, answer, the headers every answer has)."""

    def __init__(self, engine: JobEngine, cron: CronScheduler, settings: Settings) -> None:
        self.engine = engine
        self.cron = cron
        self.settings = settings
        self._ids = UUIDv7Generator(random.Random().getrandbits)  # unique, not secret
        self.router: Router[Route] = Router()
        # The route tables, one module each. A new one (the admin API, the dashboard) is one
        # line here: `self.admin = self.mount(AdminRoutes(engine, settings))`. Its routes get
        # the same authorization, error envelope and headers as these, at no extra cost.
        self.system = self.mount(SystemRoutes(engine, settings))
        self.jobs = self.mount(JobRoutes(engine))
        self.workers = self.mount(WorkerRoutes(engine))
        self.queues = self.mount(QueueRoutes(engine))
        self.events = self.mount(EventRoutes(engine))
        self.crons = self.mount(CronRoutes(cron))
        for method, path, handler in admin_routes(engine, cron, settings):
            self.router.add(method, path, handler)
        self.dashboard = dashboard.serve(settings, engine)  # None when it is off
        if self.dashboard is not None:
            self.mount(self.dashboard)
        self._mount_unsupported()  # last, so that a served route always wins over a row

    def mount(self, table: T) -> T:
        """Add every route of `table` to the router; returns the table."""
        for method, path, handler in table.routes():
            self.router.add(method, path, handler)
        return table

    def _mount_unsupported(self) -> None:
        for method, path, feature in unsupported.routes():
            self.router.add(method, path, _refuse_unsupported(feature, method, path))

    @property
    def draining(self) -> bool:
        """Set on SIGTERM, before the server stops: /ready answers 503 from then on."""
        return self.system.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.system.draining = value

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
                if not header and self.dashboard:  # a dashboard session stands for its token
                    header = self.dashboard.authorization(request)
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


def _refuse_unsupported(feature: unsupported.MissingFeature, method: str, path: str) -> Route:
    """The handler of a route in the unsupported table: 422 `unsupported`, naming it."""
    message = feature.message(method, path)

    async def refuse(request: Request) -> Response:
        raise Unsupported(message, details={**feature.details(), "path": request.path})

    return refuse
