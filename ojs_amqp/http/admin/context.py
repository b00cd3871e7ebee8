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
from ojs_amqp.store.admin_queries import AdminQueries, admin_queries_for

Handler = Callable[[Request], Awaitable[Response]]
Routes = list[tuple[str, str, Handler]]
ADMIN = "/ojs/v1/admin"


@dataclass
class AdminContext:
    engine: JobEngine
    cron: CronScheduler
    settings: Settings
    history: StatsHistory = field(default_factory=StatsHistory)
    started: float = field(default_factory=time.monotonic)
    _queries: AdminQueries | None = None
    _looked_up: bool = False

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
