"""Worker request bodies of the HTTP binding. Extra fields are ignored (the suite sends some)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from ojs_amqp.core.retry import FailureReport
from ojs_amqp.errors import InvalidRequest


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FetchIn(_Body):
    queues: list[StrictStr] = Field(min_length=1)
    count: StrictInt = 1
    worker_id: StrictStr | None = None
    visibility_timeout_ms: StrictInt | None = Field(default=None, ge=1000)


class AckIn(_Body):
    job_id: StrictStr
    result: Any = None
    worker_id: StrictStr | None = None


class ErrorIn(_Body):
    code: StrictStr = "handler_error"
    message: StrictStr = ""
    type: StrictStr | None = None
    retryable: StrictBool | None = None
    details: dict[str, Any] | None = None
    action: StrictStr | None = None

    def report(self) -> FailureReport:
        return FailureReport(
            code=self.code,
            message=self.message,
            type=self.type,
            retryable=self.retryable,
            details=self.details or {},
            action=self.action,
        )


class NackIn(_Body):
    job_id: StrictStr
    error: ErrorIn = Field(default_factory=ErrorIn)
    worker_id: StrictStr | None = None
    requeue: StrictBool = False


class HeartbeatIn(_Body):
    """Both dialects: the HTTP binding's `active_jobs` (a list of ids) and the worker
    protocol's `active_jobs` (a count) with `active_job_ids` (the list), which the official
    JavaScript and Go SDKs send on every beat; the OpenAPI document's single `job_id` too."""

    worker_id: StrictStr | None = None
    active_jobs: list[StrictStr] | StrictInt | None = None
    active_job_ids: list[StrictStr] | None = None
    job_id: StrictStr | None = None
    visibility_timeout_ms: StrictInt | None = Field(default=None, ge=1000)

    def job_ids(self) -> list[str]:
        listed = self.active_jobs if isinstance(self.active_jobs, list) else []
        ids = [*listed, *(self.active_job_ids or [])]
        if self.job_id:
            ids.append(self.job_id)
        return ids


class DirectiveIn(_Body):
    directive: StrictStr


class BeatIn(_Body):
    """`POST /ojs/v1/workers/beat` (ojs-graceful-shutdown): a worker's state with its beat;
    `active_jobs` is a count (worker protocol) or a list of ids (HTTP binding)."""

    worker_id: StrictStr = Field(min_length=1, max_length=255)
    state: StrictStr | None = None
    active_jobs: StrictInt | list[StrictStr] | None = None
    active_job_ids: list[StrictStr] | None = None
    visibility_timeout_ms: StrictInt | None = Field(default=None, ge=1000)

    def job_ids(self) -> list[str]:
        listed = self.active_jobs if isinstance(self.active_jobs, list) else []
        return [*listed, *(self.active_job_ids or [])]

    def job_count(self) -> int | None:
        if isinstance(self.active_jobs, int):
            return self.active_jobs
        ids = self.job_ids()
        return len(ids) if ids or self.active_jobs is not None else None


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise InvalidRequest(f"invalid request: {problems}") from None
