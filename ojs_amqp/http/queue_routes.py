"""Queue endpoints (list, delete) and the dead-letter extension's (list, retry, delete)."""

from __future__ import annotations

from ojs_amqp.clock import now_ms
from ojs_amqp.core.job import to_wire
from ojs_amqp.core.times import format_ms
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.errors import BackendUnavailable, InvalidRequest
from ojs_amqp.http.messages import Request, Response
from ojs_amqp.http.paging import limit_offset, pagination
from ojs_amqp.http.responses import json_response
from ojs_amqp.http.routing import BASE, RouteRow


class QueueRoutes:
    def __init__(self, engine: JobEngine) -> None:
        self.engine = engine

    def routes(self) -> list[RouteRow]:
        return [
            ("GET", f"{BASE}/queues", self.queues),
            ("DELETE", f"{BASE}/queues/{{name}}", self.delete_queue),
            ("GET", f"{BASE}/dead-letter", self.dead_letters),
            ("POST", f"{BASE}/dead-letter/{{id}}/retry", self.retry_dead_letter),
            ("DELETE", f"{BASE}/dead-letter/{{id}}", self.delete_dead_letter),
        ]

    async def queues(self, request: Request) -> Response:
        limit, offset = limit_offset(request)
        names = await self.engine.queue_names()
        page = names[offset : offset + limit]
        return json_response(
            {
                "queues": [
                    {"name": n, "status": "active", "created_at": format_ms(created)}
                    for n, created in page
                ],
                "pagination": pagination(len(names), limit, offset),
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
        limit, offset = limit_offset(request)
        queue = request.query_value("queue")
        jobs, total = await self.engine.dead_letters(queue, limit, offset)
        return json_response(
            {"jobs": [to_wire(j) for j in jobs], "pagination": pagination(total, limit, offset)}
        )

    async def retry_dead_letter(self, request: Request) -> Response:
        job = await self.engine.retry_dead_letter(request.params["id"])
        return json_response({"job": {**to_wire(job), "re_enqueued_at": format_ms(now_ms())}})

    async def delete_dead_letter(self, request: Request) -> Response:
        job_id = request.params["id"]
        await self.engine.delete_dead_letter(job_id)
        return json_response({"deleted": True, "job_id": job_id})

    # --- events ----------------------------------------------------------------------------
