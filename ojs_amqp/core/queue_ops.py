"""Queue pause state and queue statistics (HTTP binding §11.2-11.4), as pure values.

The suite reads `$.queue.name`, `$.queue.paused` and `$.queue.<state>`, where the binding's
prose has `queue` as a plain string; the suite's shape wins and the binding's fields
(`status`, `paused_at`, `stats`, `computed_at`) are added at the top level (research note
§A.5). Enqueueing into a paused queue is accepted (queue-config §5.1 MUST; the binding's 422
`queue_paused` on enqueue contradicts it and the suite expects 201).

Counts by state come from the store; the hourly figures from `ThroughputWindow`, which one
daemon keeps in memory per queue (60 one-minute buckets, so its size does not grow with the
rate); they cover this daemon's completions since it started, at most the last hour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ojs_amqp.core.job import JobState
from ojs_amqp.core.times import format_ms

MINUTE_MS = 60_000
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class QueueState:
    name: str
    paused_at_ms: int | None = None

    @property
    def paused(self) -> bool:
        return self.paused_at_ms is not None

    def pause(self, now_ms: int) -> QueueState:
        """Pausing a paused queue keeps the first pause time (the call is idempotent)."""
        return self if self.paused else replace(self, paused_at_ms=now_ms)

    def resume(self) -> QueueState:
        return replace(self, paused_at_ms=None)


def pause_response(state: QueueState) -> dict[str, Any]:
    """The answer to pause and to resume."""
    out: dict[str, Any] = {
        "queue": {"name": state.name, "paused": state.paused},
        "status": "paused" if state.paused else "active",
    }
    if state.paused_at_ms is not None:
        out["queue"]["paused_at"] = out["paused_at"] = format_ms(state.paused_at_ms)
    return out


@dataclass(slots=True)
class _Bucket:
    completed: int = 0
    failed: int = 0
    duration_ms: int = 0
    wait_ms: int = 0


@dataclass(slots=True)
class ThroughputWindow:
    """Finished attempts of one queue in one-minute buckets over the last hour."""

    started_ms: int
    _buckets: dict[int, _Bucket] = field(default_factory=dict)

    def finished(self, now_ms: int, *, ok: bool, duration_ms: int, wait_ms: int) -> None:
        """Record a completed (`ok`) or failed attempt, its run time and its time waiting."""
        minute = now_ms // MINUTE_MS
        bucket = self._buckets.get(minute)
        if bucket is None:
            self._drop_older_than(now_ms)
            bucket = self._buckets[minute] = _Bucket()
        if ok:
            bucket.completed += 1
            bucket.duration_ms += max(0, duration_ms)
            bucket.wait_ms += max(0, wait_ms)
        else:
            bucket.failed += 1

    def _drop_older_than(self, now_ms: int) -> None:
        oldest = (now_ms - HOUR_MS) // MINUTE_MS
        for minute in [m for m in self._buckets if m <= oldest]:
            del self._buckets[minute]

    def figures(self, now_ms: int) -> dict[str, Any]:
        oldest = (now_ms - HOUR_MS) // MINUTE_MS
        live = [b for m, b in self._buckets.items() if m > oldest]
        completed = sum(b.completed for b in live)
        span_s = max(1.0, min(HOUR_MS, now_ms - self.started_ms) / 1000)
        return {
            "completed_last_hour": completed,
            "failed_last_hour": sum(b.failed for b in live),
            "avg_duration_ms": round(sum(b.duration_ms for b in live) / completed)
            if completed
            else 0,
            "avg_wait_ms": round(sum(b.wait_ms for b in live) / completed) if completed else 0,
            "throughput_per_second": round(completed / span_s, 3),
        }


#: States shown in `queue` even when zero, in the binding's order.
SHOWN_STATES = (
    JobState.AVAILABLE, JobState.ACTIVE, JobState.SCHEDULED, JobState.RETRYABLE,
    JobState.PENDING, JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED,
)  # fmt: skip


def stats_response(
    state: QueueState, counts: Mapping[str, int], figures: Mapping[str, Any], now_ms: int
) -> dict[str, Any]:
    """GET /ojs/v1/queues/{name}/stats: counts by state (retained rows: finished jobs leave
    the store after their retention), the pause flag and the hourly figures."""
    by_state = {s.value: int(counts.get(s.value, 0)) for s in SHOWN_STATES}
    return {
        "queue": {"name": state.name, **by_state, "paused": state.paused},
        "status": "paused" if state.paused else "active",
        "stats": {**by_state, **figures},
        "computed_at": format_ms(now_ms),
    }
