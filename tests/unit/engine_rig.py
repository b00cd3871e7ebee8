"""An engine on the fakes (in-memory transport, fake clock) over a real SQLite store on a
tmp path, for the engine's unit tests (tests/unit/test_engine_*.py).

The SQLite store stands in until the in-memory store (ojs_amqp/testing/store.py) lands: it
answers without suspending, so nothing here waits on I/O and every run is the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ojs_amqp.core.job import Job
from ojs_amqp.engine.events import EventLog
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.metrics import Metrics
from ojs_amqp.settings import Settings
from ojs_amqp.store.sqlite import SqliteJobStore
from ojs_amqp.testing import FakeBroker, FakeScheduler, MemoryTransport
from ojs_amqp.testing.clock import settle
from ojs_amqp.testing.transport import FakeHandle


@dataclass
class Rig:
    engine: JobEngine
    transport: MemoryTransport
    clock: FakeScheduler
    store: SqliteJobStore
    metrics: Metrics
    events: EventLog
    broker: FakeBroker

    async def push(self, queue: str = "q", **fields: Any) -> Job:
        return await self.engine.push({"type": "t.job", "args": [], "queue": queue, **fields})

    async def advance(self, seconds: float) -> None:
        await self.clock.advance(seconds)

    async def settle(self) -> None:
        await settle()
        await self.engine.tasks.idle()
        await settle()

    async def stored(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        assert job is not None
        return job

    async def fetch_one(self, queue: str = "q", worker: str = "w1",
                        visibility_ms: int | None = None) -> Job:  # fmt: skip
        """Open the queue's gateway if needed, deliver what is ready, lease one job."""
        await self.open(queue)
        await self.broker.deliver(queue)
        [job] = await self.engine.fetch([queue], 1, worker, visibility_ms)
        return job

    async def open(self, queue: str = "q") -> None:
        """Open the queue's gateway as a first FETCH does, delivering what is ready."""
        if self.transport.consuming_jobs(queue):
            return
        await self.engine.queues.ensure(queue)
        opening = asyncio.ensure_future(self.engine.gateway.open_queue(queue))
        await settle()
        await self.broker.deliver(queue)
        await opening

    def metric(self, line_start: str, *labels: str) -> float:
        """The first sample whose line starts so and has each `label="value"` given."""
        for line in self.metrics.render().decode().splitlines():
            if line.startswith(line_start) and all(label in line for label in labels):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def event_types(self) -> list[str]:
        events, _, _ = self.events.query(limit=10_000)
        return [e["type"] for e in events]

    def handles(self, job_id: str) -> list[FakeHandle]:
        return [h for _, m, h in self.transport.delivered if m.job_id == job_id]


@asynccontextmanager
async def engine_rig(tmp_path: Path, **settings: Any) -> AsyncIterator[Rig]:
    clock = FakeScheduler()
    transport = MemoryTransport()
    store = SqliteJobStore(str(tmp_path / "engine.db"))
    await store.open()
    metrics, events = Metrics(), EventLog()
    settings.setdefault("fetch_wait_ms", 0)
    engine = JobEngine(Settings(prefix="unit", **settings), store, transport, events, metrics,
                       clock=clock.now_ms, scheduler=clock, rng=lambda: 0.5)  # fmt: skip
    await engine.start()
    try:
        yield Rig(engine, transport, clock, store, metrics, events, FakeBroker(transport))
    finally:
        await engine.close()
        await store.close()
