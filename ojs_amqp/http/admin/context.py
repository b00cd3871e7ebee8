"""What every admin handler reads: the engine, the cron scheduler, the settings, the store's
admin queries and the throughput history."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ojs_amqp.engine.cron import CronScheduler
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.errors import Unsupported
from ojs_amqp.http.admin.history import StatsHistory
from ojs_amqp.http.server import Request, Response
from ojs_amqp.settings import Settings
from ojs_amqp.store.admin_queries import AdminQueries, JobQuery, admin_queries_for

Handler = Callable[[Request], Awaitable[Response]]
Routes = list[tuple[str, str, Handler]]
ADMIN = "/ojs/v1/admin"
#: How stale the counts by queue and state may be (stats, queue lists, list totals).
COUNTS_TTL_S = 2.0
#: A filtered list's total is counted up to this many matches (then `total_capped`).
MAX_COUNT = 10_000


@dataclass
class AdminContext:
    engine: JobEngine
    cron: CronScheduler
    settings: Settings
    history: StatsHistory = field(default_factory=StatsHistory)
    started: float = field(default_factory=time.monotonic)
    _queries: AdminQueries | None = None
    _looked_up: bool = False
    _counts: tuple[float, dict[tuple[str, str], int]] | None = None

    @property
    def store_queries(self) -> AdminQueries | None:
        """Looked up on first use (the store is open by then)."""
        if not self._looked_up:
            self._queries = admin_queries_for(self.engine.store)
            self._looked_up = True
        return self._queries

    @property
    def queries(self) -> AdminQueries:
        """The store's admin queries; a store without them answers 422 `unsupported`."""
        if self.store_queries is None:
            raise Unsupported(
                "this job store does not provide the admin API's indexed queries "
                "(ojs_amqp/store/admin_queries.py)",
                details={"feature": "admin-api store queries"},
            )
        return self.store_queries

    async def counts(self) -> dict[tuple[str, str], int]:
        """(queue, state) -> jobs, re-read at most every COUNTS_TTL_S: the full count walks
        an index entry per job (about 0.2 s per million), and dashboards poll it."""
        now = time.monotonic()
        if self._counts is None or now - self._counts[0] >= COUNTS_TTL_S:
            self._counts = (now, await self.queries.counts())
        return self._counts[1]

    def forget_counts(self) -> None:
        """After an admin action: the next read counts afresh."""
        self._counts = None

    async def total(self, query: JobQuery) -> tuple[int, bool]:
        """How many jobs a list matches, and whether that is a lower bound: a list by queue
        and state only reads the counts above; others count at most MAX_COUNT matches."""
        plain = JobQuery(queue=query.queue, states=query.states)
        if query == plain:
            return sum(
                n for (q, s), n in (await self.counts()).items()
                if (query.queue is None or q == query.queue)
                and (not query.states or s in query.states)
            ), False  # fmt: skip
        counted = await self.queries.count(query, MAX_COUNT + 1)
        return min(counted, MAX_COUNT), counted > MAX_COUNT
