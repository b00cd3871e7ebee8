"""OJS lifecycle events, kept in a bounded in-memory log that `GET /ojs/v1/events` reads.

The log holds the most recent events of this daemon process only; a durable, subscribable
stream (a topic exchange) is planned with the observability work.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.job import Job
from ojs_amqp.core.times import format_ms


@dataclass(slots=True)
class Event:
    """What happened, captured cheaply; the OJS envelope is built only when someone reads it."""

    seq: int
    type: str
    time_ms: int
    queue: str
    job_type: str
    data: dict[str, Any]
    _envelope: dict[str, Any] | None = None

    def envelope(self, ids: UUIDv7Generator, source: str) -> dict[str, Any]:
        if self._envelope is None:
            self._envelope = {
                "specversion": "1.0",
                "id": f"evt_{ids.new(self.time_ms)}",
                "type": self.type,
                "source": source,
                "time": format_ms(self.time_ms),
                "subject": self.data.get("job_id") or self.data.get("cron_name"),
                "data": {**self.data, "timestamp": format_ms(self.time_ms)},
            }
        return self._envelope


class EventLog:
    def __init__(self, capacity: int = 10_000, source: str = "ojs://ojs-amqp") -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._seq = 0
        self._ids = UUIDv7Generator()
        self._source = source

    def emit(self, event_type: str, job: Job, now_ms: int, **data: Any) -> None:
        self._seq += 1
        payload = {
            "job_id": job.id,
            "job_type": job.type,
            "queue": job.queue,
            "state": job.state.value,
            "attempt": job.attempt,
            **data,
        }
        trace_id = job.meta.get("trace_id") if isinstance(job.meta, dict) else None
        if trace_id is not None:
            payload["trace_id"] = trace_id
        self._events.append(Event(self._seq, event_type, now_ms, job.queue, job.type, payload))

    def emit_cron(self, event_type: str, cron_name: str, queue: str, job_type: str,
                  now_ms: int, **data: Any) -> None:  # fmt: skip
        """Cron events (`cron.triggered`, `cron.skipped`): their subject is the schedule."""
        self._seq += 1
        payload = {"cron_name": cron_name, "queue": queue, "job_type": job_type, **data}
        self._events.append(Event(self._seq, event_type, now_ms, queue, job_type, payload))

    def query(
        self,
        *,
        after: int = 0,
        types: Iterable[str] = (),
        queues: Iterable[str] = (),
        job_types: Iterable[str] = (),
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """Events after cursor `after`, oldest first; returns (events, next cursor, has_more)."""
        types_set, queues_set, job_types_set = set(types), set(queues), set(job_types)
        out: list[dict[str, Any]] = []
        cursor = after
        for event in self._events:
            if event.seq <= after:
                continue
            if types_set and event.type not in types_set:
                continue
            if queues_set and event.queue not in queues_set:
                continue
            if job_types_set and event.job_type not in job_types_set:
                continue
            if len(out) == limit:
                return out, cursor, True
            out.append(event.envelope(self._ids, self._source))
            cursor = event.seq
        return out, cursor, False

    def clear(self) -> None:
        self._events.clear()
