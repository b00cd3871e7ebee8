"""An in-memory JobStore for the engine's unit tests: the same contract as the real stores
(tests/store/test_store_contract.py runs it through the same suite), no I/O, no group commit.

Rows keep the serialised record rather than the Job object, so a test that changes a Job it
wrote cannot change what the store holds, and a read builds a fresh Job as a real store does.
Every write applies at once; `writes` counts them, for tests that check how often the engine
records. Two levers let engine tests build the races and outages that need a real database
today: `hold_writes()` keeps writes in flight (they apply, in call order, on
`await release_writes()`), and `fail_with` makes every call raise, as a lost database does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from ojs_amqp.core.job import Job, JobState, from_record, to_record
from ojs_amqp.errors import Duplicate
from ojs_amqp.store.base import QueueInfo
from ojs_amqp.store.rows import finished_at, is_dead_letter


@dataclass(slots=True)
class _Row:
    queue: str
    state: JobState
    copy: int
    published: bool
    dead_letter: bool
    expires_at_ms: int | None
    finished_at_ms: int | None
    doc: bytes

    @classmethod
    def of(cls, job: Job, published: bool) -> _Row:
        return cls(job.queue, job.state, job.copy, published, is_dead_letter(job),
                   job.expires_at_ms, finished_at(job), orjson.dumps(to_record(job)))  # fmt: skip

    def job(self) -> Job:
        return from_record(orjson.loads(self.doc))


class MemoryJobStore:
    """Insertion-ordered dicts stand in for the tables."""

    kind = "memory"

    def __init__(self) -> None:
        self._jobs: dict[str, _Row] = {}
        self._queues: dict[str, int] = {}
        self._crons: dict[str, bytes] = {}
        self.writes = 0
        self.opened = False
        #: When set, every call raises it (a lost or silent database).
        self.fail_with: BaseException | None = None
        self._gate: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self._held = 0

    def hold_writes(self) -> None:
        """From now on, writes wait (as a commit in flight does) until `release_writes`."""
        if self._gate is None:
            self._gate = asyncio.Event()

    async def release_writes(self) -> None:
        """Let every held write apply, in the order they were made; returns once they have."""
        gate, self._gate = self._gate, None
        if gate is None:
            return
        drained = self._drained = asyncio.Event()
        if not self._held:
            drained.set()
        gate.set()
        await drained.wait()

    @property
    def writes_in_flight(self) -> int:
        return self._held

    async def _enter(self, write: bool) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if write:
            self.writes += 1
            gate = self._gate
            if gate is not None:
                self._held += 1
                try:
                    await gate.wait()
                finally:
                    self._held -= 1
                    if not self._held and self._drained is not None:
                        self._drained.set()  # the write applies before its task yields
                if self.fail_with is not None:
                    raise self.fail_with

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.opened = False

    async def insert(self, job: Job, *, published: bool) -> None:
        await self._enter(True)
        if job.id in self._jobs:
            raise Duplicate(
                f"a job with id {job.id} already exists", details={"existing_job_id": job.id}
            )
        self._jobs[job.id] = _Row.of(job, published)

    async def get(self, job_id: str) -> Job | None:
        await self._enter(False)
        row = self._jobs.get(job_id)
        return row.job() if row else None

    async def update(
        self,
        job: Job,
        *,
        expect_copy: int | None = None,
        expect_state: JobState | None = None,
        published: bool = True,
    ) -> bool:
        await self._enter(True)
        row = self._jobs.get(job.id)
        if row is None:
            return False
        if expect_copy is not None and row.copy != expect_copy:
            return False
        if expect_state is not None and row.state is not expect_state:
            return False
        self._jobs[job.id] = _Row.of(job, published)
        return True

    async def mark_published(self, job_ids: list[str]) -> None:
        await self._enter(True)
        for job_id in job_ids:
            row = self._jobs.get(job_id)
            if row is not None:
                row.published = True

    async def unpublished(self, limit: int) -> list[Job]:
        await self._enter(False)
        rows = [r for r in self._jobs.values() if not r.published]
        return [r.job() for r in rows[:limit]]

    async def outbox_size(self) -> int:
        await self._enter(False)
        return sum(1 for r in self._jobs.values() if not r.published)

    async def delete(self, job_id: str) -> bool:
        await self._enter(True)
        return self._jobs.pop(job_id, None) is not None

    def _dead(self, queue: str | None) -> list[tuple[str, _Row]]:
        rows = [(i, r) for i, r in self._jobs.items()
                if r.dead_letter and (queue is None or r.queue == queue)]  # fmt: skip
        rows.sort(key=lambda item: (item[1].finished_at_ms or 0, item[0]), reverse=True)
        return rows

    async def dead_letters(
        self, queue: str | None, limit: int, offset: int
    ) -> tuple[list[Job], int]:
        await self._enter(False)
        rows = self._dead(queue)
        return [r.job() for _, r in rows[offset : offset + limit]], len(rows)

    async def expiring(self, now_ms: int, limit: int) -> list[Job]:
        await self._enter(False)
        rows = [r for r in self._jobs.values()
                if r.expires_at_ms is not None and r.finished_at_ms is None
                and r.expires_at_ms <= now_ms and r.state is not JobState.ACTIVE]  # fmt: skip
        return [r.job() for r in rows[:limit]]

    async def prune_finished(self, completed_before_ms: int, discarded_before_ms: int) -> int:
        await self._enter(True)
        doomed = []
        for job_id, r in self._jobs.items():
            if r.finished_at_ms is None or r.dead_letter:
                continue
            limit = discarded_before_ms if r.state is JobState.DISCARDED else completed_before_ms
            if r.finished_at_ms < limit:
                doomed.append(job_id)
        for job_id in doomed:
            del self._jobs[job_id]
        return len(doomed)

    async def prune_dead_letters(self, before_ms: int, keep_per_queue: int) -> int:
        await self._enter(True)
        doomed = {i for i, r in self._dead(None) if (r.finished_at_ms or 0) < before_ms}
        kept: dict[str, int] = {}
        for job_id, row in self._dead(None):  # newest first
            if job_id in doomed:
                continue
            kept[row.queue] = kept.get(row.queue, 0) + 1
            if kept[row.queue] > keep_per_queue:
                doomed.add(job_id)
        for job_id in doomed:
            del self._jobs[job_id]
        return len(doomed)

    async def open_jobs(self, queue: str) -> int:
        await self._enter(False)
        return sum(1 for r in self._jobs.values() if r.queue == queue and r.finished_at_ms is None)

    async def unfinished(self, queue: str) -> list[Job]:
        await self._enter(False)
        return [r.job() for r in self._jobs.values()
                if r.queue == queue and r.finished_at_ms is None]  # fmt: skip

    async def delete_queue(self, queue: str) -> int:
        await self._enter(True)
        doomed = [i for i, r in self._jobs.items()
                  if r.queue == queue and r.finished_at_ms is not None]  # fmt: skip
        for job_id in doomed:
            del self._jobs[job_id]
        self._queues.pop(queue, None)
        return len(doomed)

    async def available(self, queue: str) -> list[Job]:
        await self._enter(False)
        return [r.job() for r in self._jobs.values()
                if r.queue == queue and r.state is JobState.AVAILABLE]  # fmt: skip

    async def count_by_state(self) -> dict[tuple[str, str], int]:
        await self._enter(False)
        counts: dict[tuple[str, str], int] = {}
        for r in self._jobs.values():
            key = (r.queue, r.state.value)
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def add_queue(self, name: str, now_ms: int) -> None:
        await self._enter(True)
        self._queues.setdefault(name, now_ms)

    async def queues(self) -> list[QueueInfo]:
        await self._enter(False)
        return [QueueInfo(n, c) for n, c in sorted(self._queues.items())]

    async def put_cron(
        self, cron: dict[str, Any], *, expect_next_run_ms: int | None = None
    ) -> bool:
        await self._enter(True)
        name = cron["name"]
        if expect_next_run_ms is not None:
            stored = self._crons.get(name)
            if stored is None or orjson.loads(stored)["next_run_at_ms"] != expect_next_run_ms:
                return False
        self._crons[name] = orjson.dumps(cron)
        return True

    async def get_cron(self, name: str) -> dict[str, Any] | None:
        await self._enter(False)
        doc = self._crons.get(name)
        return orjson.loads(doc) if doc is not None else None

    async def crons(self) -> list[dict[str, Any]]:
        await self._enter(False)
        return [orjson.loads(self._crons[n]) for n in sorted(self._crons)]

    async def due_crons(self, now_ms: int) -> list[dict[str, Any]]:
        await self._enter(False)
        due = [orjson.loads(d) for d in self._crons.values()]
        due = [c for c in due if c["next_run_at_ms"] <= now_ms]
        return sorted(due, key=lambda c: c["next_run_at_ms"])

    async def delete_cron(self, name: str) -> bool:
        await self._enter(True)
        return self._crons.pop(name, None) is not None

    async def reset(self) -> None:
        await self._enter(True)
        self._jobs.clear()
        self._queues.clear()
        self._crons.clear()
