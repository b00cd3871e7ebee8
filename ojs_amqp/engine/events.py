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


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    envelope: dict[str, Any]


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
            "timestamp": format_ms(now_ms),
            **data,
        }
        trace_id = job.meta.get("trace_id") if isinstance(job.meta, dict) else None
        if trace_id is not None:
            payload["trace_id"] = trace_id
        envelope = {
            "specversion": "1.0",
            "id": f"evt_{self._ids.new(now_ms)}",
            "type": event_type,
            "source": self._source,
            "time": format_ms(now_ms),
            "subject": job.id,
            "data": payload,
        }
        self._events.append(Event(self._seq, envelope))

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
            env = event.envelope
            if types_set and env["type"] not in types_set:
                continue
            if queues_set and env["data"]["queue"] not in queues_set:
                continue
            if job_types_set and env["data"]["job_type"] not in job_types_set:
                continue
            if len(out) == limit:
                return out, cursor, True
            out.append(env)
            cursor = event.seq
        return out, cursor, False

    def clear(self) -> None:
        self._events.clear()
