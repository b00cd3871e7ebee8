"""Batch enqueue (`POST /ojs/v1/jobs/batch`, HTTP binding §9.2): the body's validation,
duplicates inside one batch, and the 201 answer's shape.

Every job is parsed by `core/envelope.py`'s `parse_enqueue`, exactly as a single push is;
the first job that fails decides the answer, with its index in the message and in
`details` (`index`, and `field` such as `jobs[37].type`), so the producer can fix it. Nothing
of a batch is stored until all of it is valid; how the store and the broker make the rest
all-or-nothing is docs/adr/0010-level-4.md, "Batch".
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ojs_amqp.core.envelope import parse_enqueue
from ojs_amqp.core.job import Job
from ojs_amqp.core.times import format_ms
from ojs_amqp.core.unique import Admit, Holder, Ignore, Reject, Replace, UniquePolicy, decide
from ojs_amqp.core.unique import rejection as unique_rejection
from ojs_amqp.errors import InvalidRequest, OjsError

#: The HTTP binding's schema bound (`maxItems: 10000`), which ojs-json-format asks for.
MAX_BATCH_JOBS = 10_000


def parse_batch(body: Any, *, now_ms: int, new_id: Callable[[], str]) -> list[Job]:
    """The jobs of a batch body, in order; the first invalid job's error, re-addressed."""
    jobs_raw = _jobs_array(body)
    jobs: list[Job] = []
    seen_ids: dict[str, int] = {}
    for index, raw in enumerate(jobs_raw):
        try:
            job = parse_enqueue(raw, now_ms=now_ms, new_id=new_id())
        except OjsError as exc:
            raise _at_index(exc, index) from None
        first = seen_ids.setdefault(job.id, index)
        if first != index:
            raise InvalidRequest(
                f"batch validation failed: jobs[{index}].id repeats the id of jobs[{first}]",
                details={"index": index, "field": f"jobs[{index}].id", "same_as": first},
            )
        jobs.append(job)
    return jobs


def _jobs_array(body: Any) -> list[Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("the batch body must be a JSON object with a 'jobs' array")
    unknown = sorted(set(body) - {"jobs"})
    if unknown:
        raise InvalidRequest(
            f"the batch body has {unknown[0]!r}, which is no batch field (only 'jobs')",
            details={"field": unknown[0]},
        )
    jobs = body.get("jobs")
    if not isinstance(jobs, list):
        raise InvalidRequest("the batch body needs 'jobs', an array of job envelopes",
                             details={"field": "jobs"})  # fmt: skip
    if not jobs:
        raise InvalidRequest("'jobs' is empty: a batch holds 1 to 10000 jobs",
                             details={"field": "jobs"})  # fmt: skip
    if len(jobs) > MAX_BATCH_JOBS:
        raise InvalidRequest(
            f"'jobs' holds {len(jobs)} jobs; a batch holds at most {MAX_BATCH_JOBS} "
            "(split it into several batches)",
            details={"field": "jobs", "count": len(jobs), "max": MAX_BATCH_JOBS},
        )
    return jobs


def _at_index(exc: OjsError, index: int) -> OjsError:
    """The same error class, its field prefixed with `jobs[i].` and the index added."""
    details = dict(exc.details)
    inner = details.get("field")
    if inner is None and details.get("errors"):
        inner = details["errors"][0].get("field")
    where = f"jobs[{index}]" + (f".{inner}" if inner else "")
    details.update(index=index, field=where)
    error = copy.copy(exc)
    error.message = f"batch validation failed: job at index {index}: {exc.message}"
    error.args = (error.message,)
    error.details = details
    return error


# --- unique keys inside one batch ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keyed:
    """A batch job under a unique policy, with its fingerprint."""

    index: int
    job: Job
    policy: UniquePolicy
    key: str


def resolve_in_batch(keyed: Sequence[Keyed], now_ms: int) -> dict[int, int | None]:
    """Duplicates between jobs of the same batch, decided as if each earlier job were
    already stored (it will be, in the same commit). Returns index -> what to do: the
    index itself (insert), another index (the answer for this job is that job: ignore), or
    None (left out: a later job replaces it). A reject raises 409 naming the index."""
    outcome: dict[int, int | None] = {}
    holding: dict[str, Keyed] = {}
    for item in keyed:
        earlier = holding.get(item.key)
        holders = [] if earlier is None else [_as_holder(earlier)]
        verdict = decide(item.policy, holders, now_ms)
        if isinstance(verdict, Reject) and earlier is not None:
            error = unique_rejection(verdict, item.key)
            error.details.update(index=item.index, existing_index=earlier.index)
            error.message = (
                f"batch job at index {item.index}: {error.message} (jobs[{earlier.index}])"
            )
            raise error
        if isinstance(verdict, Ignore) and earlier is not None:
            outcome[item.index] = outcome[earlier.index]
            continue
        if isinstance(verdict, Replace) and earlier is not None:
            outcome[earlier.index] = None
        assert isinstance(verdict, Admit | Replace)
        outcome[item.index] = item.index
        holding[item.key] = item
    return outcome


def _as_holder(item: Keyed) -> Holder:
    job = item.job
    return Holder(job.id, job.state, job.created_at_ms, job.scheduled_at_ms)


# --- the answer ----------------------------------------------------------------------------


def batch_response(jobs: Sequence[Job]) -> dict[str, Any]:
    """201's body: `{jobs: [{id, type, state, queue, created_at, enqueued_at}], count}`."""
    out = []
    for job in jobs:
        item: dict[str, Any] = {
            "id": job.id, "type": job.type, "state": job.state.value, "queue": job.queue,
            "created_at": format_ms(job.created_at_ms),
        }  # fmt: skip
        if job.enqueued_at_ms is not None:
            item["enqueued_at"] = format_ms(job.enqueued_at_ms)
        if job.scheduled_at_ms is not None:
            item["scheduled_at"] = format_ms(job.scheduled_at_ms)
        out.append(item)
    return {"jobs": out, "count": len(out)}
