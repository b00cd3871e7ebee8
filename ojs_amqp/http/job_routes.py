"""Job endpoints: push, look up, cancel, activate, and progress reports."""

from __future__ import annotations

from typing import Any

from ojs_amqp.core import progress
from ojs_amqp.core.job import Job, JobState, to_wire
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.http.messages import Request, Response
from ojs_amqp.http.responses import json_response, read_object
from ojs_amqp.http.routing import BASE, RouteRow


class JobRoutes:
    def __init__(self, engine: JobEngine) -> None:
        self.engine = engine

    def routes(self) -> list[RouteRow]:
        return [
            ("POST", f"{BASE}/jobs", self.push),
            ("GET", f"{BASE}/jobs/{{id}}", self.info),
            ("DELETE", f"{BASE}/jobs/{{id}}", self.cancel),
            ("POST", f"{BASE}/jobs/{{id}}/activate", self.activate),
            ("PUT", f"{BASE}/jobs/{{id}}/progress", self.put_progress),
            ("GET", f"{BASE}/jobs/{{id}}/progress", self.get_progress),
        ]

    async def push(self, request: Request) -> Response:
        body = _with_trace_context(request, read_object(request))
        job = await self.engine.push(body)
        headers = [
            ("Location", f"{BASE}/jobs/{job.id}"),
            *await self.engine.admission.pressure_headers(job.queue),
        ]
        return json_response({"job": to_wire(job)}, 201, headers)

    async def info(self, request: Request) -> Response:
        return json_response({"job": to_wire(await self.engine.get(request.params["id"]))})

    async def cancel(self, request: Request) -> Response:
        job = await self.engine.cancel(request.params["id"])
        return json_response({"job": to_wire(job)})

    async def activate(self, request: Request) -> Response:
        job = await self.engine.activate(request.params["id"])
        return json_response({"job": {**to_wire(job), "previous_state": "pending"}})

    async def put_progress(self, request: Request) -> Response:
        """ojs-progress: a report on an active job; on any other job it changes nothing and
        says so (`applied: false`), never an error (PRG-007)."""
        update = progress.parse_update(read_object(request))
        job, applied = await self.engine.report_progress(request.params["id"], update)
        body = _progress_body(job)
        body["applied"] = applied
        if not applied:
            body["reason"] = (
                f"job {job.id} is {job.state.value}: only an active job takes progress"
                if job.state is not JobState.ACTIVE
                else f"job {job.id} is held by another worker"
            )
        return json_response(body, headers=_progress_headers(job))

    async def get_progress(self, request: Request) -> Response:
        job = await self.engine.get(request.params["id"])
        return json_response(_progress_body(job), headers=_progress_headers(job))


def _progress_body(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "state": job.state.value, **progress.to_wire(job.progress)}


def _progress_headers(job: Job) -> list[tuple[str, str]]:
    headers = [("Cache-Control", "no-cache")]
    value = job.progress.get("progress") if job.progress else None
    if value is not None:
        headers.append(("X-OJS-Progress", f"{value:g}"))
    return headers


def _with_trace_context(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """W3C trace context from the request headers goes into meta (unless the body sets it),
    so it travels with the job: in every broker copy's headers and across retries."""
    meta = body.get("meta")
    if meta is not None and not isinstance(meta, dict):
        return body  # the envelope parser will refuse it
    headers = request.headers
    carried = {k: headers[k] for k in ("traceparent", "tracestate") if k in headers}
    if not carried:
        return body
    return {**body, "meta": {**carried, **(meta or {})}}
