"""Cron endpoints: register, list, look up and delete schedules (docs/scheduling.md)."""

from __future__ import annotations

from typing import Any

from ojs_amqp.engine.cron import CronScheduler, cron_to_wire
from ojs_amqp.http.messages import Request, Response
from ojs_amqp.http.paging import limit_offset, pagination
from ojs_amqp.http.responses import json_response, read_object
from ojs_amqp.http.routing import BASE, RouteRow


class CronRoutes:
    def __init__(self, cron: CronScheduler) -> None:
        self.cron = cron

    def routes(self) -> list[RouteRow]:
        return [
            ("POST", f"{BASE}/cron", self.register_cron),
            ("GET", f"{BASE}/cron", self.list_crons),
            ("GET", f"{BASE}/cron/{{name}}", self.get_cron),
            ("DELETE", f"{BASE}/cron/{{name}}", self.delete_cron),
        ]

    async def register_cron(self, request: Request) -> Response:
        cron, created = await self.cron.register(read_object(request))
        return json_response(_one_cron(cron), 201 if created else 200)

    async def list_crons(self, request: Request) -> Response:
        limit, offset = limit_offset(request)
        crons = await self.cron.list()
        page = [cron_to_wire(c) for c in crons[offset : offset + limit]]
        return json_response(
            {"crons": page, "cron_jobs": page, "pagination": pagination(len(crons), limit, offset)}
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
