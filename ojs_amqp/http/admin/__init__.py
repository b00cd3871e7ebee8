"""The OJS admin API (ojs-admin-api, ojs-dead-letter §10, backpressure's run-time queue
configuration) under `/ojs/v1/admin/`, the official admin UI's `/ojs/v1/crons`, and the
`--admin-ui-dir` static files under `/ojs/admin/`. docs/admin-api.md describes every
endpoint and choice.

`admin_routes` is what the HTTP app registers: (method, path, handler) rows."""

from __future__ import annotations

from typing import Any

from ojs_amqp.engine.cron import CronScheduler
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.http.admin.context import AdminContext
from ojs_amqp.http.admin.crons import CronRoutes
from ojs_amqp.http.admin.dead_letters import DeadLetterRoutes
from ojs_amqp.http.admin.jobs import JobRoutes
from ojs_amqp.http.admin.queues import QueueRoutes
from ojs_amqp.http.admin.system import SystemRoutes
from ojs_amqp.http.admin.ui_dir import StaticDir
from ojs_amqp.http.admin.workers import WorkerRoutes
from ojs_amqp.settings import Settings

#: Manifest entries for the extensions served here.
EXTENSIONS = [
    {"name": "admin-api", "uri": "urn:ojs:ext:admin-api"},
    {"name": "dead-letter", "uri": "urn:ojs:ext:dead-letter"},
]


def admin_routes(
    engine: JobEngine, cron: CronScheduler, settings: Settings
) -> list[tuple[str, str, Any]]:
    ctx = AdminContext(engine, cron, settings)
    rows: list[tuple[str, str, Any]] = []
    for group in (SystemRoutes, JobRoutes, DeadLetterRoutes, WorkerRoutes, CronRoutes):
        rows.extend(group(ctx).routes())
    queues = QueueRoutes(ctx)
    rows.extend(queues.routes())
    if isinstance(engine, JobEngine):  # not the stand-ins of the HTTP unit tests
        engine.events.sinks.append(ctx.history)
        queues.attach()
    if settings.admin_ui_dir:
        rows.extend(StaticDir(settings.admin_ui_dir).routes())
    return rows
