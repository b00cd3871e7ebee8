"""Publishes OJS events to the events topic exchange, off the hot path.

Events are notifications: they are published without waiting for confirms, from a bounded
buffer; when the buffer is full (the broker is slow or away) events are dropped and counted
rather than slowing jobs down. Subscribers that need every transition should read the job
store (GET /ojs/v1/jobs/{id}) or the events log, not rely on this stream alone.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from ojs_amqp.engine.events import Event, EventLog
from ojs_amqp.engine.ports import JobTransport
from ojs_amqp.errors import OjsError

log = logging.getLogger("ojs_amqp.events")


class EventPublisher:
    def __init__(self, log_: EventLog, transport: JobTransport, capacity: int = 10_000) -> None:
        self._log = log_
        self._transport = transport
        self._buffer: asyncio.Queue[Event] = asyncio.Queue(capacity)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        self._log.sinks.append(self._offer)
        self._task = asyncio.create_task(self._run(), name="event-publisher")

    async def close(self) -> None:
        if self._offer in self._log.sinks:
            self._log.sinks.remove(self._offer)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _offer(self, event: Event) -> None:
        try:
            self._buffer.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _run(self) -> None:
        while True:
            event = await self._buffer.get()
            body = orjson.dumps(self._log.envelope(event))
            try:
                await self._transport.publish_event(event.type, event.queue, event.seq, body)
            except OjsError as exc:
                self.dropped += 1
                log.debug("event %s not published: %r", event.type, exc)
