"""Throughput over time for `GET /ojs/v1/admin/stats/history` and the stats' per-minute
rates: an event sink (engine/events.py) that counts, per queue and per minute, the jobs
enqueued, completed (with their run times) and failed.

In memory, this daemon process only (a restart starts the history afresh), 24 hours of
minutes; the run times kept per minute and queue are a bounded sample (the first
`SAMPLE` of the minute), enough for p50/p99 on a dashboard.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ojs_amqp.core.times import format_ms
from ojs_amqp.engine.events import Event

MINUTE_MS = 60_000
KEEP_MINUTES = 24 * 60
SAMPLE = 512
PERIODS_MS = {"1m": MINUTE_MS, "5m": 5 * MINUTE_MS, "1h": 60 * MINUTE_MS, "1d": 1440 * MINUTE_MS}


@dataclass(slots=True)
class Counts:
    enqueued: int = 0
    processed: int = 0
    failed: int = 0
    run_ms: list[int] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        self.enqueued += other.enqueued
        self.processed += other.processed
        self.failed += other.failed
        self.run_ms.extend(other.run_ms)


class StatsHistory:
    def __init__(self) -> None:
        #: minute start (ms) -> queue -> counts; oldest minute first.
        self._minutes: OrderedDict[int, dict[str, Counts]] = OrderedDict()

    def __call__(self, event: Event) -> None:
        """The sink: must stay cheap (it runs inside every emit)."""
        kind = event.type
        if kind not in ("job.enqueued", "job.completed", "job.failed"):
            return
        minute = event.time_ms - event.time_ms % MINUTE_MS
        queues = self._minutes.get(minute)
        if queues is None:
            queues = self._minutes[minute] = {}
            while len(self._minutes) > KEEP_MINUTES:
                self._minutes.popitem(last=False)
        counts = queues.get(event.queue)
        if counts is None:
            counts = queues[event.queue] = Counts()
        if kind == "job.enqueued":
            counts.enqueued += 1
        elif kind == "job.failed":
            counts.failed += 1
        else:
            counts.processed += 1
            duration = event.data.get("duration_ms")
            if isinstance(duration, int) and len(counts.run_ms) < SAMPLE:
                counts.run_ms.append(duration)

    def total(self, since_ms: int, until_ms: int, queue: str | None = None) -> Counts:
        out = Counts()
        for minute, queues in self._minutes.items():
            if since_ms <= minute < until_ms:
                for name, counts in queues.items():
                    if queue is None or name == queue:
                        out.add(counts)
        return out

    def series(
        self, period_ms: int, since_ms: int, until_ms: int, queue: str | None
    ) -> list[dict[str, Any]]:
        """One point per period from `since_ms` (rounded down) to `until_ms`, empty periods
        included (a chart needs its zeros)."""
        start = since_ms - since_ms % period_ms
        points = []
        for bucket in range(start, until_ms, period_ms):
            counts = self.total(bucket, bucket + period_ms, queue)
            points.append(
                {
                    "timestamp": format_ms(bucket),
                    "processed": counts.processed,
                    "failed": counts.failed,
                    "enqueued": counts.enqueued,
                    "latency_p50_ms": percentile(counts.run_ms, 0.50),
                    "latency_p99_ms": percentile(counts.run_ms, 0.99),
                }
            )
        return points

    def clear(self) -> None:
        self._minutes.clear()


def percentile(values: list[int], fraction: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
