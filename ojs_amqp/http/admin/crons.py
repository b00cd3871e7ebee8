"""`/ojs/v1/crons` (plural, keyed by id, `{items, pagination}`) as the official admin UI
calls it; the spec's `/ojs/v1/cron` stays as it is. A schedule's id is its name."""

from __future__ import annotations

from typing import Any

from ojs_amqp.engine.cron import cron_to_wire
from ojs_amqp.errors import Conflict, InvalidRequest
from ojs_amqp.http.admin import params
from ojs_amqp.http.admin.context import AdminContext, Routes
from ojs_amqp.http.responses import json_response, read_object
from ojs_amqp.http.server import Request, Response

BASE = "/ojs/v1/crons"


def ui_cron(cron: dict[str, Any]) -> dict[str, Any]:
    wire = cron_to_wire(cron)
    template = cron.get("job_template") or {}
    return {
        **wire,
        "id": cron["name"],
        "schedule": cron.get("expression"),
        "queue": (template.get("options") or {}).get("queue") or "default",
        "enabled": cron.get("enabled", True),
    }


class CronRoutes:
    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx

    def routes(self) -> Routes:
        return [
            ("GET", BASE, self.list),
            ("GET", f"{BASE}/{{id}}", self.detail),
            ("PATCH", f"{BASE}/{{id}}", self.toggle),
            ("DELETE", f"{BASE}/{{id}}", self.delete),
        ]

    async def list(self, request: Request) -> Response:
        page = params.page_of(request)
        crons = await self.ctx.cron.list()
        items = [ui_cron(c) for c in crons[page.offset : page.offset + page.limit]]
        return json_response({"items": items, "pagination": page.wire(len(crons))})

    async def detail(self, request: Request) -> Response:
        return json_response(ui_cron(await self.ctx.cron.get(request.params["id"])))

    async def toggle(self, request: Request) -> Response:
        """`{"enabled": bool}`: a disabled schedule keeps its times but enqueues nothing.
        Written compare-and-set on the next run, so a tick firing meanwhile is not undone."""
        body = read_object(request)
        if set(body) != {"enabled"} or not isinstance(body["enabled"], bool):
            raise InvalidRequest('the body must be {"enabled": true|false}',
                                 details={"field": "enabled"})  # fmt: skip
        for _ in range(3):
            cron = await self.ctx.cron.get(request.params["id"])
            expected = cron["next_run_at_ms"]
            cron["enabled"] = body["enabled"]
            if await self.ctx.cron.store.put_cron(cron, expect_next_run_ms=expected):
                return json_response(ui_cron(cron))
        raise Conflict("the schedule kept changing while being updated; retry")

    async def delete(self, request: Request) -> Response:
        await self.ctx.cron.delete(request.params["id"])
        return Response(b"", 204)
