"""The JobStore contract: SQLite (the default), PostgreSQL and the in-memory test store
implement it, and tests/store/test_store_contract.py holds all three to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.errors import BackendUnavailable


@dataclass(frozen=True, slots=True)
class QueueInfo:
    name: str
    created_at_ms: int


class StoreConfigError(ValueError):
    """`--store` names no store we can open (an unknown scheme, a bad parameter)."""


class StoreUnavailable(BackendUnavailable):
    """The store did not answer (a lost or silent database server): nothing was recorded,
    or the outcome is unknown; the caller's move has not happened as far as it knows."""

    hint = "The job store is unreachable; retry with backoff."


class JobStore(Protocol):
    """Every method is atomic. Implementations must be safe to call from one event loop.

    A write is durable (as far as the store goes) when its call returns, and every read
    issued after that sees it; whether a read sees a write still in flight is unspecified.
    Lookups by id (`get`) answer in the order they were made: the gateway buffers deliveries
    in the order their lookups return (FIFO fetches depend on it).
    """

    #: What /ojs/v1/health calls the store ("sqlite", "postgresql", "memory").
    kind: str

    async def open(self) -> None:
        """Create or migrate the schema. Must be idempotent."""

    async def close(self) -> None: ...

    async def insert(self, job: Job, *, published: bool) -> None:
        """Add a new job; raise Duplicate if the id exists. `published=False` puts the row in
        the outbox until `mark_published` (it is replayed on start if we crash first)."""

    async def get(self, job_id: str) -> Job | None: ...

    async def update(
        self,
        job: Job,
        *,
        expect_copy: int | None = None,
        expect_state: JobState | None = None,
        published: bool = True,
    ) -> bool:
        """Replace the job's row. With `expect_copy` (and `expect_state`), only if the stored
        copy number (and state) still match (compare-and-set); return whether it was written.
        The state matters where a move keeps the copy number (a lease of a delivered copy)."""

    async def mark_published(self, job_ids: list[str]) -> None: ...

    async def unpublished(self, limit: int) -> list[Job]:
        """Outbox rows: written but never confirmed by the broker."""

    async def outbox_size(self) -> int:
        """How many rows are still waiting for their broker confirm."""

    async def delete(self, job_id: str) -> bool: ...

    async def dead_letters(
        self, queue: str | None, limit: int, offset: int
    ) -> tuple[list[Job], int]:
        """Dead-lettered jobs, newest first, and the total count."""

    async def expiring(self, now_ms: int, limit: int) -> list[Job]:
        """Non-terminal jobs whose expires_at has passed."""

    async def prune_finished(self, completed_before_ms: int, discarded_before_ms: int) -> int:
        """Delete finished jobs past their retention; dead letters are kept."""

    async def prune_dead_letters(self, before_ms: int, keep_per_queue: int) -> int:
        """Delete dead letters older than `before_ms`, and beyond the newest `keep_per_queue`
        of each queue."""

    async def open_jobs(self, queue: str) -> int:
        """Jobs of `queue` not yet in a terminal state (backpressure's max_depth)."""
        ...

    async def unfinished(self, queue: str) -> list[Job]:
        """Every job of `queue` not yet in a terminal state (pending included)."""
        ...

    async def delete_queue(self, queue: str) -> int:
        """Forget a queue: its row and every finished job of it (unfinished jobs stay, as
        they may have been pushed while it was being deleted); returns the jobs deleted."""
        ...

    async def available(self, queue: str) -> list[Job]:
        """Every available job of `queue` (to republish them if the broker lost the queue)."""
        ...

    async def count_by_state(self) -> dict[tuple[str, str], int]:
        """(queue, state) -> number of jobs."""

    async def add_queue(self, name: str, now_ms: int) -> None: ...

    async def queues(self) -> list[QueueInfo]: ...

    async def put_cron(
        self, cron: dict[str, Any], *, expect_next_run_ms: int | None = None
    ) -> bool:
        """Insert or replace a cron definition (a dict with `name` and `next_run_at_ms`).
        With `expect_next_run_ms`, only if the stored next run still matches."""

    async def get_cron(self, name: str) -> dict[str, Any] | None: ...

    async def crons(self) -> list[dict[str, Any]]: ...

    async def due_crons(self, now_ms: int) -> list[dict[str, Any]]:
        """Crons whose next run is at or before `now_ms`, earliest first."""

    async def delete_cron(self, name: str) -> bool: ...

    async def reset(self) -> None:
        """Delete everything (test mode only)."""
