"""Admin system endpoints: aggregate stats and their history, maintenance mode (read only:
see docs/admin-api.md), and the configuration with its secrets redacted."""

from __future__ import annotations

import dataclasses
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ojs_amqp import __version__
from ojs_amqp.clock import now_ms
from ojs_amqp.errors import InvalidRequest, Unsupported
from ojs_amqp.http.admin import views
from ojs_amqp.http.admin.context import ADMIN, AdminContext, Routes
from ojs_amqp.http.admin.history import MINUTE_MS, PERIODS_MS
from ojs_amqp.http.admin.params import _time
from ojs_amqp.http.responses import json_response, read_object
from ojs_amqp.http.server import Request, Response
from ojs_amqp.settings import Settings

MAX_POINTS = 1440
REDACTED = "***"


class SystemRoutes:
    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx

    def routes(self) -> Routes:
        return [
            ("GET", f"{ADMIN}/stats", self.stats),
            ("GET", f"{ADMIN}/stats/history", self.history),
            ("GET", f"{ADMIN}/system/maintenance", self.maintenance),
            ("POST", f"{ADMIN}/system/maintenance", self.set_maintenance),
            ("GET", f"{ADMIN}/system/config", self.config),
        ]

    async def stats(self, request: Request) -> Response:
        engine = self.ctx.engine
        by_state: dict[str, int] = {}
        for (_, state), n in (await self.ctx.counts()).items():
            by_state[state] = by_state.get(state, 0) + n
        now = now_ms()
        recent = self.ctx.history.total(now - MINUTE_MS, now + 1)
        return json_response(
            {
                "queues": len(await engine.queue_names()),
                "workers": len(engine.workers.all()),
                "jobs": views.counts_of(by_state),
                "throughput": {"processed_per_minute": recent.processed,
                               "failed_per_minute": recent.failed,
                               "enqueued_per_minute": recent.enqueued},
                "dead_letters": sum((await self.ctx.queries.dead_letter_counts())[0].values()),
                "uptime_seconds": int(time.monotonic() - self.ctx.started),
                "broker": {"connected": engine.broker.connected,
                           "version": engine.broker.server_version},
                "version": __version__,
            }
        )  # fmt: skip

    async def history(self, request: Request) -> Response:
        """Counts per period (1m, 5m, 1h, 1d) since this daemon started, at most a day."""
        period = request.query_value("period") or "5m"
        if period not in PERIODS_MS:
            raise InvalidRequest(f"period must be one of {', '.join(PERIODS_MS)}",
                                 details={"field": "period"})  # fmt: skip
        now = now_ms()
        until = _time(request.query_value("until"), "until") or now
        since = _time(request.query_value("since"), "since") or until - 60 * MINUTE_MS
        if since >= until:
            raise InvalidRequest("since must be before until", details={"field": "since"})
        step = PERIODS_MS[period]
        since = max(since, until - MAX_POINTS * step)
        points = self.ctx.history.series(step, since, until, request.query_value("queue"))
        return json_response({"period": period, "data": points})

    async def maintenance(self, request: Request) -> Response:
        return json_response({"enabled": False, "maintenance": False, "reason": None,
                              "enabled_at": None, "estimated_end": None})  # fmt: skip

    async def set_maintenance(self, request: Request) -> Response:
        """Maintenance mode pauses every queue, native AMQP consumers included; queue pause
        is not built (issue #17), so turning it on is refused rather than half done."""
        body = read_object(request)
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            raise InvalidRequest("enabled must be true or false", details={"field": "enabled"})
        if enabled:
            raise Unsupported(
                "maintenance mode is not supported: it pauses every queue, and queue pause "
                "(native AMQP consumers included) is not built yet",
                details={"feature": "maintenance mode", "spec": "ojs-admin-api §12.1"},
            )
        return await self.maintenance(request)

    async def config(self, request: Request) -> Response:
        return json_response({"config": redacted(self.ctx.settings), "version": __version__})


def redacted(settings: Settings) -> dict[str, Any]:
    """Every setting, with token secrets and the broker password replaced by `***`."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name == "auth_tokens":
            value = [{"scope": t.scope, "secret": REDACTED} for t in value]
        elif f.name == "amqp_url":
            value = _without_password(value)
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[f.name] = value
    return out


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:{REDACTED}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
