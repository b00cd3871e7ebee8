"""Group commit for the PostgreSQL store: every write made in one turn of the event loop (and
every write made while the previous batch was on the wire) goes to the server together.

Row writes (insert, compare-and-set update, publish mark, delete) become one call of the
`ojs_apply` function: one round trip for a whole batch, applied in call order, each with its
own outcome. Rarer writes (retention, crons, queues) are plain statements; when a batch holds
both, it runs as one transaction in call order. A writer resumes only once its batch is
committed, so a caller that acks a broker message after `await store.update(...)` never acks
ahead of its record, as with SQLite. Batches go out one at a time, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

INSERT, UPDATE, PUBLISH, DELETE = 1, 2, 3, 4

_APPLY = (
    "SELECT ojs_apply($1::smallint[], $2::text[], $3::text[], $4::text[], $5::integer[], "
    "$6::boolean[], $7::boolean[], $8::bigint[], $9::bigint[], $10::bytea[], $11::integer[], "
    "$12::text[])"
)

#: (kind, id, queue, state, copy, published, dead_letter, expires_at_ms, finished_at_ms, doc,
#: expect_copy, expect_state)
RowWrite = tuple[Any, ...]


@dataclass(slots=True)
class _Statement:
    sql: str
    args: tuple[Any, ...]


@dataclass(slots=True)
class _Pending:
    writes: list[RowWrite | _Statement] = field(default_factory=list)
    waiters: list[asyncio.Future[Any]] = field(default_factory=list)


def _count(status: str) -> int:
    """Rows a statement touched, from its command tag ("DELETE 3", "INSERT 0 1")."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def _run(
    conn: PoolConnectionProxy[asyncpg.Record], writes: list[RowWrite | _Statement]
) -> list[Any]:
    """Each write's outcome: a bool for a row write, a row count for a statement."""
    outcomes: list[Any] = []
    rows: list[RowWrite] = []

    async def apply_rows() -> None:
        if rows:
            columns = [list(c) for c in zip(*rows, strict=True)]
            outcomes.extend(await conn.fetchval(_APPLY, *columns))
            rows.clear()

    for write in writes:
        if isinstance(write, _Statement):
            await apply_rows()
            outcomes.append(_count(await conn.execute(write.sql, *write.args)))
        else:
            rows.append(write)
    await apply_rows()
    return outcomes


class GroupCommit:
    """Queues writes and sends each batch through a connection that `connection` lends."""

    def __init__(
        self,
        connection: Callable[[], Any],
        translate: Callable[[BaseException], BaseException],
    ) -> None:
        self._connection = connection  # an async context manager yielding a Connection
        self._translate = translate
        self._pending = _Pending()
        self._sender: asyncio.Task[None] | None = None
        self.batches = 0  # sent so far (benchmarks and tests read it)

    def row(self, write: RowWrite) -> Awaitable[bool]:
        return self._queue(write)

    def statement(self, sql: str, *args: Any) -> Awaitable[int]:
        return self._queue(_Statement(sql, args))

    def _queue(self, write: RowWrite | _Statement) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._pending.writes.append(write)
        self._pending.waiters.append(waiter)
        if self._sender is None:
            # started on the next turn, so the writes of this turn join the first batch
            self._sender = loop.create_task(self._send_all())
        return waiter

    async def _send_all(self) -> None:
        try:
            while self._pending.writes:
                batch, self._pending = self._pending, _Pending()
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: _Pending) -> None:
        self.batches += 1
        try:
            async with self._connection() as conn:
                if len(batch.writes) > 1 and any(isinstance(w, _Statement) for w in batch.writes):
                    async with conn.transaction():
                        outcomes = await _run(conn, batch.writes)
                else:
                    outcomes = await _run(conn, batch.writes)
        except Exception as exc:
            failure = self._translate(exc)
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_exception(failure)
            return
        for waiter, outcome in zip(batch.waiters, outcomes, strict=True):
            if not waiter.done():
                waiter.set_result(outcome)

    async def drain(self) -> None:
        """Wait until every queued write has been sent (close calls it)."""
        while self._sender is not None:
            await asyncio.shield(self._sender)
