"""Admin job endpoints: the filtered list (indexed), detail, cancel, retry, and the bulk
retry / cancel / delete, each of which needs `confirm: true`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from ojs_amqp.errors import InvalidRequest, OjsError, Unsupported
from ojs_amqp.http.admin import params, views
from ojs_amqp.http.admin.context import ADMIN, AdminContext, Routes
from ojs_amqp.http.responses import json_response, read_object
from ojs_amqp.http.server import Request, Response
from ojs_amqp.store.admin_queries import JobQuery

#: The most jobs one bulk call acts on (more matching: `remaining` says how many are left;
#: call again). Bounds the time one request holds the daemon.
MAX_BULK = 10_000
#: Actions run this many at once, so their store writes share group commits.
BULK_CONCURRENCY = 50
JOB_FILTERS = ("queue", "state", "type", "since", "until")

Action = Callable[[str], Awaitable[Any]]


class JobRoutes:
    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx

    def routes(self) -> Routes:
        return [
            ("GET", f"{ADMIN}/jobs", self.list),
            ("GET", f"{ADMIN}/jobs/{{id}}", self.detail),
            ("PATCH", f"{ADMIN}/jobs/{{id}}", self.change),
            ("POST", f"{ADMIN}/jobs/{{id}}/cancel", self.cancel),
            ("POST", f"{ADMIN}/jobs/{{id}}/retry", self.retry),
            ("POST", f"{ADMIN}/jobs/bulk/retry", self.bulk_retry),
            ("POST", f"{ADMIN}/jobs/bulk/cancel", self.bulk_cancel),
            ("POST", f"{ADMIN}/jobs/bulk/delete", self.bulk_delete),
        ]

    async def list(self, request: Request) -> Response:
        page = params.page_of(request)
        query = params.job_query(params.query_fields(request, JOB_FILTERS))
        query, newest_first = params.sorted_query(request, query)
        jobs = await self.ctx.queries.page(query, page.limit, page.offset, newest_first)
        total, capped = await self.ctx.total(query)
        return json_response(
            {"items": [views.job_item(j) for j in jobs], "pagination": page.wire(total, capped)}
        )

    async def detail(self, request: Request) -> Response:
        job = await self.ctx.engine.get(request.params["id"])
        return json_response(views.job_detail(job))

    async def change(self, request: Request) -> Response:
        """The official UI's priority edit: a job's priority is fixed in its broker copy."""
        raise Unsupported(
            "changing a job after it was pushed (priority included) is not supported: its "
            "message already sits in RabbitMQ with that priority; cancel it and push a copy",
            details={"feature": "job update", "path": request.path},
        )

    async def cancel(self, request: Request) -> Response:
        job = await self.ctx.engine.cancel(request.params["id"])
        self.ctx.forget_counts()
        return json_response(views.job_detail(job))

    async def retry(self, request: Request) -> Response:
        job = await self.ctx.engine.dead.retry_job(request.params["id"])
        self.ctx.forget_counts()
        return json_response(views.job_detail(job))

    async def bulk_retry(self, request: Request) -> Response:
        return await self._bulk(request, "retry", self.ctx.engine.dead.retry_job, ("discarded",))

    async def bulk_cancel(self, request: Request) -> Response:
        return await self._bulk(
            request,
            "cancel",
            self.ctx.engine.cancel,
            ("scheduled", "available", "pending", "active", "retryable"),
        )

    async def bulk_delete(self, request: Request) -> Response:
        return await self._bulk(request, "delete", self.ctx.engine.dead.delete_finished_job,
                                ("completed", "cancelled", "discarded"))  # fmt: skip

    async def _bulk(
        self, request: Request, action: str, act: Action, default_states: tuple[str, ...]
    ) -> Response:
        body = read_object(request)
        params.confirmed(body, f"bulk {action}")
        raw = body.get("filter", {})
        if not isinstance(raw, dict):
            raise InvalidRequest("filter must be an object", details={"field": "filter"})
        query = params.job_query(raw)
        if not query.states:  # the jobs the action applies to; others would only fail
            query = replace(query, states=default_states)
        return json_response(await run_bulk(self.ctx, action, query, act))


async def run_bulk(ctx: AdminContext, action: str, query: JobQuery, act: Action) -> dict[str, Any]:
    """Apply `act` to every matching job (at most MAX_BULK): the spec's summary, with each
    failure's job id and OJS error."""
    total = await ctx.queries.count(query)
    ids = await ctx.queries.job_ids(query, MAX_BULK)
    errors: list[dict[str, Any]] = []

    async def one(job_id: str) -> None:
        try:
            await act(job_id)
        except OjsError as exc:
            errors.append({"job_id": job_id, "error": exc.message, "code": exc.code})

    for start in range(0, len(ids), BULK_CONCURRENCY):
        await asyncio.gather(*(one(i) for i in ids[start : start + BULK_CONCURRENCY]))
    ctx.forget_counts()
    return {
        "action": action,
        "matched": total,
        "processed": len(ids),
        "succeeded": len(ids) - len(errors),
        "failed": len(errors),
        "remaining": max(0, total - len(ids)),
        "errors": errors[:100],
    }
