"""Admin queue endpoints: the list with counts by state, one queue's detail and
configuration, purge of finished jobs, run-time configuration (backpressure), and the
queue stats backpressure clients read (`GET /ojs/v1/queues/{name}/stats`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ojs_amqp.clock import now_ms
from ojs_amqp.core.durations import format_duration_ms
from ojs_amqp.core.envelope import validate_queue
from ojs_amqp.core.times import format_ms
from ojs_amqp.errors import InvalidRequest, NotFound, OjsError, Unsupported
from ojs_amqp.http.admin import params, views
from ojs_amqp.http.admin.context import ADMIN, AdminContext, Routes
from ojs_amqp.http.admin.history import MINUTE_MS, percentile
from ojs_amqp.http.admin.jobs import run_bulk
from ojs_amqp.http.responses import json_response, read_object
from ojs_amqp.http.server import Request, Response
from ojs_amqp.store.admin_queries import JobQuery

log = logging.getLogger("ojs_amqp.admin")

FINISHED = ("completed", "cancelled", "discarded")
STRATEGIES = ("reject", "block", "drop_oldest")
#: Configuration the daemon cannot apply at run time yet, and why (422 `unsupported`).
NOT_APPLICABLE = {
    "concurrency": "workers choose their own concurrency (the daemon does not cap it)",
    "rate_limit": "rate limits are not built (issue #17)",
    "retention": "retention is one setting for every queue (--retention-completed, "
    "--retention-discarded)",
    "paused": "pause and resume are not built (issue #17)",
}


class QueueRoutes:
    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx
        self._loading: asyncio.Task[None] | None = None

    def attach(self) -> None:
        """Run-time configuration survives restarts: read back from the store at start (a
        task: the routes are made synchronously, and a networked store answers in a round
        trip, before the server's first requests in practice); test mode's reset forgets it."""
        self.ctx.engine.on_reset.append(self._reset)
        if self.ctx.store_queries is not None:
            self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        queries = self.ctx.store_queries
        if queries is None:
            return
        try:
            stored = await queries.queue_config()
        except OjsError as exc:  # a store that is gone at start: the settings' bounds apply
            log.error("run-time queue configuration not applied: %s", exc.message)
            return
        for queue, config in stored.items():
            self._apply(queue, config)

    async def _loaded(self) -> None:
        """A change waits for the start's read, which would otherwise undo it."""
        if self._loading is not None:
            await asyncio.shield(self._loading)

    def routes(self) -> Routes:
        return [
            ("GET", f"{ADMIN}/queues", self.list),
            ("GET", f"{ADMIN}/queues/{{name}}", self.detail),
            ("DELETE", f"{ADMIN}/queues/{{name}}/jobs", self.purge),
            ("PUT", f"{ADMIN}/queues/{{name}}/config", self.configure),
            ("GET", "/ojs/v1/queues/{name}/stats", self.stats),
        ]

    async def _reset(self) -> None:
        """Test mode's reset forgets run-time configuration too."""
        self.ctx.engine.admission.depth_bounds.clear()
        self.ctx.history.clear()
        self.ctx.forget_counts()
        await self._loaded()
        await self.ctx.queries.reset()

    async def list(self, request: Request) -> Response:
        page = params.page_of(request)
        known = await self.ctx.engine.queue_names()
        counts = await self.ctx.counts()
        config = await self.ctx.queries.queue_config()
        items = [
            self._summary(name, created, _by_state(counts, name), config.get(name))
            for name, created in known[page.offset : page.offset + page.limit]
        ]
        return json_response({"items": items, "pagination": page.wire(len(known))})

    async def detail(self, request: Request) -> Response:
        name = request.params["name"]
        created = dict(await self.ctx.engine.queue_names()).get(name)
        if created is None:
            raise NotFound(f"queue {name!r} not found",
                           details={"resource_type": "queue", "resource_id": name})  # fmt: skip
        queries = self.ctx.queries
        config = (await queries.queue_config(name)).get(name)
        by_state = _by_state(await queries.counts(name), name)
        out = self._summary(name, created, by_state, config)
        oldest = await queries.oldest_available_ms(name)
        out["oldest_available_at"] = format_ms(oldest) if oldest is not None else None
        settings = self.ctx.settings
        out["configuration"] = {
            "concurrency": None,
            "rate_limit": None,
            "retention": {"completed": format_duration_ms(settings.retention_completed_ms),
                          "discarded": format_duration_ms(settings.retention_discarded_ms)},
            "backpressure": out["backpressure"],
        }  # fmt: skip
        return json_response(out)

    def _summary(
        self, name: str, created_ms: int, by_state: dict[str, int], config: dict[str, Any] | None
    ) -> dict[str, Any]:
        now = now_ms()
        recent = self.ctx.history.total(now - MINUTE_MS, now + 1, name)
        bound, warning = self.ctx.engine.admission.depth_bound(name)
        return {
            "name": name,
            "state": "active",
            "paused": False,
            "counts": views.counts_of(by_state),
            "depth": sum(n for s, n in by_state.items() if s not in FINISHED),
            "throughput": {"processed_per_minute": recent.processed,
                           "failed_per_minute": recent.failed},
            "latency_ms": {"p50": percentile(recent.run_ms, 0.5),
                           "p95": percentile(recent.run_ms, 0.95),
                           "p99": percentile(recent.run_ms, 0.99)},
            "backpressure": None if bound <= 0 else {
                "max_depth": bound, "strategy": "reject", "warning_threshold": warning,
                "source": "admin" if config else "settings"},
            "created_at": format_ms(created_ms),
        }  # fmt: skip

    async def purge(self, request: Request) -> Response:
        """Delete a queue's finished jobs (ojs-admin-api §6.5): `states` among completed,
        cancelled, discarded; `older_than` on the time they finished."""
        name = request.params["name"]
        body = read_object(request)
        params.confirmed(body, "purge")
        states = body.get("states")
        if not isinstance(states, list) or not states:
            raise InvalidRequest(
                "states must list the states to purge", details={"field": "states"}
            )
        query = params.job_query({"queue": name, "states": states})
        open_states = [s for s in query.states if s not in FINISHED]
        if open_states:
            raise Unsupported(
                f"purge deletes finished jobs only; {', '.join(open_states)} jobs still have "
                "messages in RabbitMQ: cancel them first (POST /ojs/v1/admin/jobs/bulk/cancel)",
                details={"field": "states", "unsupported": open_states},
            )
        before = params.job_query({"until": body.get("older_than")}).until_ms
        query = JobQuery(queue=name, states=query.states, finished_before_ms=before)
        result = await run_bulk(self.ctx, "purge", query, self.ctx.engine.dead.delete_finished_job)
        return json_response({**result, "purged_count": result["succeeded"],
                              "states": list(query.states), "queue": name})  # fmt: skip

    async def configure(self, request: Request) -> Response:
        """Run-time configuration: `backpressure` (max_depth, strategy `reject`,
        warning_threshold) is applied at once and kept in the store; anything the daemon
        cannot apply is refused with 422 `unsupported`, and nothing is changed."""
        name = request.params["name"]
        validate_queue(name)
        body = read_object(request)
        for key in body:
            if key in NOT_APPLICABLE:
                raise Unsupported(f"{key} cannot be set on a queue: {NOT_APPLICABLE[key]}",
                                  details={"field": key})  # fmt: skip
            if key != "backpressure":
                raise InvalidRequest(f"unknown queue setting {key!r}", details={"field": key})
        config = {"backpressure": _backpressure(body.get("backpressure"))}
        await self._loaded()
        await self.ctx.engine.ensure_queue(name)
        await self.ctx.queries.put_queue_config(name, config)
        self._apply(name, config)
        return await self.detail(request)

    def _apply(self, queue: str, config: dict[str, Any]) -> None:
        bp = config.get("backpressure") or {}
        if bp.get("max_depth"):
            self.ctx.engine.admission.depth_bounds[queue] = (
                bp["max_depth"],
                bp["warning_threshold"],
            )
        else:
            self.ctx.engine.admission.depth_bounds.pop(queue, None)

    async def stats(self, request: Request) -> Response:
        name = request.params["name"]
        validate_queue(name)
        by_state = _by_state(await self.ctx.queries.counts(name), name)
        bound, warning = self.ctx.engine.admission.depth_bound(name)
        depth = await self.ctx.engine.admission.depths.depth(name)
        now = now_ms()
        recent = self.ctx.history.total(now - MINUTE_MS, now + 1, name)
        stats = {
            "queue": name, "depth": depth, "max_depth": bound or None,
            "pressure": round(depth / bound, 4) if bound > 0 else None,
            "warning_threshold": warning if bound > 0 else None,
            **views.counts_of(by_state),
            "processed_per_minute": recent.processed, "failed_per_minute": recent.failed,
            "computed_at": format_ms(now),
        }  # fmt: skip
        return json_response({"queue": name, "status": "active", "stats": stats})


def _by_state(counts: dict[tuple[str, str], int], queue: str) -> dict[str, int]:
    return {state: n for (q, state), n in counts.items() if q == queue}


def _backpressure(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequest("backpressure must be an object", details={"field": "backpressure"})
    unknown = set(raw) - {"max_depth", "strategy", "warning_threshold", "max_size_bytes"}
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidRequest(f"unknown backpressure field {field!r}", details={"field": field})
    depth = raw.get("max_depth", 0)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise InvalidRequest("max_depth must be a whole number, 0 for unbounded",
                             details={"field": "backpressure.max_depth"})  # fmt: skip
    strategy = raw.get("strategy", "reject")
    if strategy not in STRATEGIES:
        raise InvalidRequest(f"strategy must be one of {', '.join(STRATEGIES)}",
                             details={"field": "backpressure.strategy"})  # fmt: skip
    if strategy != "reject":
        raise Unsupported(f"backpressure strategy {strategy!r} is not built; only 'reject' is",
                          details={"field": "backpressure.strategy"})  # fmt: skip
    if raw.get("max_size_bytes"):
        raise Unsupported("max_size_bytes is not built; bound the depth (max_depth) instead",
                          details={"field": "backpressure.max_size_bytes"})  # fmt: skip
    warning = raw.get("warning_threshold", 0.8)
    if not isinstance(warning, (int, float)) or isinstance(warning, bool) or not 0 <= warning <= 1:
        raise InvalidRequest("warning_threshold must be a number from 0 to 1",
                             details={"field": "backpressure.warning_threshold"})  # fmt: skip
    return {"max_depth": depth, "strategy": strategy, "warning_threshold": float(warning)}
