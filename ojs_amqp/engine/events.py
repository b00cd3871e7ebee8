"""OJS lifecycle events: a bounded in-memory log (`GET /ojs/v1/events` polls it), live
subscribers (the Server-Sent Events stream), and optional sinks (the events exchange).

The log holds the most recent events of this daemon process only. Subscribers that fall too
far behind lose events rather than slow the daemon down; they are told with a `gap` marker.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.job import Job
from ojs_amqp.core.times import format_ms

log = logging.getLogger("ojs_amqp.events")


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


@dataclass(frozen=True, slots=True)
class EventFilter:
    types: frozenset[str] = frozenset()
    queues: frozenset[str] = frozenset()
    job_types: frozenset[str] = frozenset()
    job_id: str | None = None

    def matches(self, event: Event) -> bool:
        return (
            (not self.types or event.type in self.types)
            and (not self.queues or event.queue in self.queues)
            and (not self.job_types or event.job_type in self.job_types)
            and (self.job_id is None or event.data.get("job_id") == self.job_id)
        )


class Subscription:
    """A live feed of matching events; `None` in the feed means events were dropped."""

    def __init__(self, log: EventLog, match: EventFilter, capacity: int) -> None:
        self._log = log
        self.match = match
        self.feed: asyncio.Queue[Event | None] = asyncio.Queue(capacity)
        self._gap = False

    def offer(self, event: Event) -> None:
        if not self.match.matches(event):
            return
        if self._gap:
            if self.feed.full():
                return
            self.feed.put_nowait(None)
            self._gap = False
        if self.feed.full():
            self._gap = True
            return
        self.feed.put_nowait(event)

    def envelope(self, event: Event) -> dict[str, Any]:
        return self._log.envelope(event)

    def close(self) -> None:
        self._log.unsubscribe(self)


class EventLog:
    def __init__(self, capacity: int = 10_000, source: str = "ojs://ojs-amqp") -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._seq = 0
        self._ids = UUIDv7Generator(random.Random().getrandbits)  # unique, not secret
        self._source = source
        self._subscribers: set[Subscription] = set()
        #: Called with every event (the events exchange publisher); must not block.
        self.sinks: list[Callable[[Event], None]] = []

    def _append(self, event: Event) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s", event.type, event.data.get("job_id") or event.data.get("cron_name"),
                extra={"event": event.type, "queue": event.queue, **event.data},
            )  # fmt: skip
        self._events.append(event)
        for subscriber in self._subscribers:
            subscriber.offer(event)
        for sink in self.sinks:
            sink(event)

    def envelope(self, event: Event) -> dict[str, Any]:
        return event.envelope(self._ids, self._source)

    def subscribe(
        self, match: EventFilter, *, after: int = 0, capacity: int = 1000
    ) -> Subscription:
        """Start a live feed; events after cursor `after` still in the log are replayed."""
        subscription = Subscription(self, match, capacity)
        if after:
            for event in self._events:
                if event.seq > after:
                    subscription.offer(event)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

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
        self._append(Event(self._seq, event_type, now_ms, job.queue, job.type, payload))

    def emit_cron(self, event_type: str, cron_name: str, queue: str, job_type: str,
                  now_ms: int, **data: Any) -> None:  # fmt: skip
        """Cron events (`cron.triggered`, `cron.skipped`): their subject is the schedule."""
        self._seq += 1
        payload = {"cron_name": cron_name, "queue": queue, "job_type": job_type, **data}
        self._append(Event(self._seq, event_type, now_ms, queue, job_type, payload))

    def query(
        self, match: EventFilter = EventFilter(), *, after: int = 0, limit: int = 50
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """Events after cursor `after`, oldest first; returns (events, next cursor, has_more)."""
        out: list[dict[str, Any]] = []
        cursor = after
        for event in self._events:
            if event.seq <= after or not match.matches(event):
                continue
            if len(out) == limit:
                return out, cursor, True
            out.append(self.envelope(event))
            cursor = event.seq
        return out, cursor, False

    def clear(self) -> None:
        self._events.clear()
