"""Admin dead-letter endpoints (ojs-dead-letter §10, ojs-admin-api §11): the list with
filters, stats by queue and by error, retry and delete of one, bulk retry and purge (both
need `confirm: true`)."""

from __future__ import annotations

from typing import Any

from ojs_amqp.errors import InvalidRequest, NotFound
from ojs_amqp.http.admin import params, views
from ojs_amqp.http.admin.context import ADMIN, AdminContext, Routes
from ojs_amqp.http.admin.jobs import JOB_FILTERS, run_bulk
from ojs_amqp.http.responses import json_response, read_object
from ojs_amqp.http.server import Request, Response


class DeadLetterRoutes:
    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx

    def routes(self) -> Routes:
        return [
            ("GET", f"{ADMIN}/dead-letter", self.list),
            ("GET", f"{ADMIN}/dead-letter/stats", self.stats),
            ("POST", f"{ADMIN}/dead-letter/retry", self.bulk_retry),
            ("DELETE", f"{ADMIN}/dead-letter", self.purge),
            ("GET", f"{ADMIN}/dead-letter/{{id}}", self.detail),
            ("POST", f"{ADMIN}/dead-letter/{{id}}/retry", self.retry),
            ("DELETE", f"{ADMIN}/dead-letter/{{id}}", self.delete),
        ]

    async def list(self, request: Request) -> Response:
        """Newest first; `since`/`until` bound the time each one was dead-lettered."""
        page = params.page_of(request)
        fields = params.query_fields(request, JOB_FILTERS)
        fields.pop("state", None)  # dead letters are discarded, always
        query = params.job_query(fields, dead_letter=True)
        jobs = await self.ctx.queries.page(query, page.limit, page.offset, True)
        total, capped = await self.ctx.total(query)
        return json_response(
            {"items": [views.job_detail(j) for j in jobs], "pagination": page.wire(total, capped)}
        )

    async def stats(self, request: Request) -> Response:
        by_queue, by_error = await self.ctx.queries.dead_letter_counts()
        return json_response(
            {"total": sum(by_queue.values()), "by_queue": by_queue, "by_error_type": by_error}
        )

    async def detail(self, request: Request) -> Response:
        job = await self.ctx.engine.get(request.params["id"])
        if not (job.dead_letter and job.state.value == "discarded"):
            raise NotFound(
                f"no dead letter with id {job.id}",
                details={"resource_type": "dead_letter", "resource_id": job.id},
            )
        return json_response(views.job_detail(job))

    async def retry(self, request: Request) -> Response:
        job = await self.ctx.engine.retry_dead_letter(request.params["id"])
        self.ctx.forget_counts()
        return json_response(views.job_detail(job))

    async def delete(self, request: Request) -> Response:
        await self.ctx.engine.delete_dead_letter(request.params["id"])
        self.ctx.forget_counts()
        return Response(b"", 204)

    async def bulk_retry(self, request: Request) -> Response:
        body = read_object(request)
        params.confirmed(body, "retrying dead letters in bulk")
        query = params.job_query(_filter(body), dead_letter=True)
        result = await run_bulk(self.ctx, "retry", query, self.ctx.engine.retry_dead_letter)
        return json_response(result)

    async def purge(self, request: Request) -> Response:
        """Delete dead letters: all, or those matching `filter` and/or dead-lettered before
        `older_than`."""
        body = read_object(request)
        params.confirmed(body, "purging dead letters")
        fields = _filter(body)
        if body.get("older_than") is not None:
            fields["until"] = body["older_than"]
        query = params.job_query(fields, dead_letter=True)
        result = await run_bulk(self.ctx, "purge", query, self.ctx.engine.delete_dead_letter)
        return json_response({**result, "purged_count": result["succeeded"]})


def _filter(body: dict[str, Any]) -> dict[str, Any]:
    raw = body.get("filter") or {}
    if not isinstance(raw, dict):
        raise InvalidRequest("filter must be an object", details={"field": "filter"})
    return {k: v for k, v in raw.items() if k != "state"}
