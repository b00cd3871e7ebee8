"""Worker endpoints of the HTTP binding: fetch, ack, nack, heartbeat, directives, and the
graceful-shutdown beat and per-worker health."""

from __future__ import annotations

from ojs_amqp.clock import now_ms
from ojs_amqp.core.job import JobState, to_wire
from ojs_amqp.core.times import format_ms
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.engine.workers import WORKER_STATES
from ojs_amqp.errors import InvalidRequest, NotFound
from ojs_amqp.http import schemas
from ojs_amqp.http.messages import Request, Response
from ojs_amqp.http.responses import fetched_response, json_response, read_object
from ojs_amqp.http.routing import BASE, RouteRow


class WorkerRoutes:
    def __init__(self, engine: JobEngine) -> None:
        self.engine = engine

    def routes(self) -> list[RouteRow]:
        return [
            ("POST", f"{BASE}/workers/fetch", self.fetch),
            ("POST", f"{BASE}/workers/ack", self.ack),
            ("POST", f"{BASE}/workers/nack", self.nack),
            ("POST", f"{BASE}/workers/heartbeat", self.heartbeat),
            ("POST", f"{BASE}/workers/{{worker_id}}/directive", self.directive),
            ("POST", f"{BASE}/workers/beat", self.beat),
            ("GET", f"{BASE}/workers/{{worker_id}}/health", self.worker_health),
        ]

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
