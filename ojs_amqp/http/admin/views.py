"""The admin API's JSON shapes for jobs, queues and workers (kept stable: the dashboard and
the official admin UI read them)."""

from __future__ import annotations

from typing import Any

from ojs_amqp.core.job import Job, JobState, to_wire
from ojs_amqp.core.times import format_ms
from ojs_amqp.engine.workers import WorkerInfo

STATE_NAMES = tuple(s.value for s in JobState)
_METADATA_TIMES = ("created_at", "enqueued_at", "scheduled_at", "started_at", "completed_at",
                   "cancelled_at", "discarded_at")  # fmt: skip


def job_item(job: Job) -> dict[str, Any]:
    """A job in a list: its whole envelope (lists are paged, at most 100)."""
    return to_wire(job)


def job_detail(job: Job) -> dict[str, Any]:
    """The full envelope at the top level, with `args`, `meta` and `errors` always present
    and the times again under `metadata` (ojs-admin-api §7.2)."""
    out = to_wire(job)
    out.setdefault("args", [])
    out.setdefault("meta", {})
    out.setdefault("errors", [])
    out.setdefault("result", None)
    out["retry_policy"] = out.get("retry")
    out["metadata"] = {name: out.get(name) for name in _METADATA_TIMES}
    return out


def counts_of(by_state: dict[str, int]) -> dict[str, int]:
    return {state: by_state.get(state, 0) for state in STATE_NAMES}


def worker_item(info: WorkerInfo, now_ms: int, leased: list[str]) -> dict[str, Any]:
    jobs = sorted(set(leased) | info.held)
    active = len(jobs) if jobs or info.active_jobs is None else info.active_jobs
    return {
        "id": info.worker_id,
        "worker_id": info.worker_id,
        "kind": info.kind,
        "hostname": "",  # not announced by HTTP workers nor by the AMQP binding's hello
        "state": info.shown_state(now_ms),
        "announced_state": info.state,
        "queues": list(info.queues),
        "active_jobs": active,
        "jobs": jobs,
        "started_at": format_ms(info.first_seen_ms or info.last_seen_ms),
        "last_heartbeat_at": format_ms(info.last_seen_ms),
    }
