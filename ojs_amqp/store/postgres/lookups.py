"""Batched lookups by job id for the PostgreSQL store: every `get` made in one turn of the
event loop (and while the previous batch was on the wire) is one `= ANY($1)` query.

Besides the round trips it saves, it keeps the order the engine relies on: lookups answer in
the order they were asked (one batch at a time, results handed out in call order), as
SQLite's synchronous reads do. The HTTP gateway buffers deliveries in the order their
lookups return, so a pool answering them out of order would break FIFO fetches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

_BY_IDS = "SELECT id, doc FROM ojs_jobs WHERE id = ANY($1::text[])"


class BatchedLookups:
    def __init__(
        self,
        connection: Callable[[], Any],
        translate: Callable[[BaseException], BaseException],
    ) -> None:
        self._connection = connection  # an async context manager yielding a Connection
        self._translate = translate
        self._pending: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self._reader: asyncio.Task[None] | None = None
        self.batches = 0

    def doc(self, job_id: str) -> asyncio.Future[bytes | None]:
        """The stored document of `job_id`, or None."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes | None] = loop.create_future()
        self._pending.append((job_id, waiter))
        if self._reader is None:
            self._reader = loop.create_task(self._read_all())
        return waiter

    async def _read_all(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._read(batch)
        finally:
            self._reader = None

    async def _read(self, batch: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        self.batches += 1
        try:
            async with self._connection() as conn:
                rows = await conn.fetch(_BY_IDS, list({job_id for job_id, _ in batch}))
        except Exception as exc:
            failure = self._translate(exc)
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(failure)
            return
        docs = {row[0]: row[1] for row in rows}
        for job_id, waiter in batch:
            if not waiter.done():
                waiter.set_result(docs.get(job_id))
