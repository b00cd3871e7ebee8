"""Admin worker endpoints: every worker seen lately, HTTP (fetch, heartbeat, beat) and
native (the AMQP binding), with the queues it takes from and the jobs it holds; quiet one
(its next heartbeat says so); deregister a stale one."""

from __future__ import annotations

from ojs_amqp.clock import now_ms
from ojs_amqp.errors import Conflict, NotFound
from ojs_amqp.http.admin import params, views
from ojs_amqp.http.admin.context import ADMIN, AdminContext, Routes
from ojs_amqp.http.responses import json_response
from ojs_amqp.http.server import Request, Response


class WorkerRoutes:
    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx

    def routes(self) -> Routes:
        return [
            ("GET", f"{ADMIN}/workers", self.list),
            ("GET", f"{ADMIN}/workers/{{id}}", self.detail),
            ("POST", f"{ADMIN}/workers/{{id}}/quiet", self.quiet),
            ("DELETE", f"{ADMIN}/workers/{{id}}", self.deregister),
        ]

    def _items(self) -> list[dict[str, object]]:
        now = now_ms()
        leased = self.ctx.engine.leases.by_worker()
        return [
            views.worker_item(info, now, leased.get(info.worker_id, []))
            for info in self.ctx.engine.workers.all()
        ]

    async def list(self, request: Request) -> Response:
        page = params.page_of(request)
        items = self._items()
        summary = {"total": len(items), "running": 0, "quiet": 0, "drain": 0, "terminate": 0,
                   "stale": 0}  # fmt: skip
        for item in items:
            state = str(item["state"])
            summary[state] = summary.get(state, 0) + 1
        return json_response(
            {"items": items[page.offset : page.offset + page.limit], "summary": summary,
             "pagination": page.wire(len(items))}
        )  # fmt: skip

    async def detail(self, request: Request) -> Response:
        worker_id = request.params["id"]
        for item in self._items():
            if item["id"] == worker_id:
                return json_response(item)
        raise _unknown(worker_id)

    async def quiet(self, request: Request) -> Response:
        """Fetch hands the worker nothing from now on, and HTTP workers read the directive in
        their next heartbeat or beat answer."""
        worker_id = request.params["id"]
        if not self.ctx.engine.workers.quiet(worker_id):
            raise _unknown(worker_id)
        self.ctx.engine.set_worker_directive(worker_id, "quiet")
        return json_response({"id": worker_id, "worker_id": worker_id, "directive": "quiet"})

    async def deregister(self, request: Request) -> Response:
        """Only a stale worker: a live one would re-appear at its next beat. Its leases are
        not cut short; they expire at their visibility deadline as for any silent worker."""
        worker_id = request.params["id"]
        info = self.ctx.engine.workers.get(worker_id)
        if info is None:
            raise _unknown(worker_id)
        if info.shown_state(now_ms()) != "stale":
            raise Conflict(
                f"worker {worker_id} was seen lately ({info.state}); only a stale worker can "
                "be deregistered: quiet it instead",
                details={"worker_id": worker_id, "state": info.state},
            )
        self.ctx.engine.workers.forget(worker_id)
        return Response(b"", 204)


def _unknown(worker_id: str) -> NotFound:
    return NotFound(
        f"no worker {worker_id!r} has been seen lately",
        details={"resource_type": "worker", "resource_id": worker_id},
    )
