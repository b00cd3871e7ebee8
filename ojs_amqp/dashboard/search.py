"""Search jobs by what their args or meta contain (`GET /ojs/v1/admin/search`), the
dashboard's most requested feature that the admin API's indexed filters cannot answer.

No index can serve "contains" over JSON, so a search reads the newest SEARCH_WINDOW jobs
of the store (newest first) and stops at the first page of matches: its cost is bounded
whatever the store holds, and the answer says how far it looked. On SQLite "newest" is the
order rows were written (rowid); on PostgreSQL the creation time (its index, migration 0002),
matched against the field's JSON text, so a NUL escape in a document cannot fail a search."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import orjson

from ojs_amqp.core.job import from_record, to_wire
from ojs_amqp.errors import InvalidRequest, Unsupported
from ojs_amqp.http.responses import json_response
from ojs_amqp.http.server import Request, Response
from ojs_amqp.store.postgres import PostgresJobStore

PATH = "/ojs/v1/admin/search"
#: How many of the newest jobs one search reads at most.
SEARCH_WINDOW = 100_000
MAX_RESULTS = 100
FIELDS = ("args", "meta")


class JobSearch:
    """Over the SQLite store's connection or the PostgreSQL store's pool (another store
    answers 422 `unsupported`). `store` is looked up when a search comes: the store opens
    later than the routes are made."""

    def __init__(self, store: Callable[[], object]) -> None:
        self._store = store

    async def handle(self, request: Request) -> Response:
        text = (request.query_value("q") or "").strip()
        field = request.query_value("in") or "args"
        if not text or "\x00" in text:
            raise InvalidRequest("q must be the text to look for", details={"field": "q"})
        if field not in FIELDS:
            raise InvalidRequest("in must be args or meta", details={"field": "in"})
        raw = request.query_value("per_page") or "25"
        if not raw.isdigit() or int(raw) < 1:
            raise InvalidRequest("per_page must be a whole number", details={"field": "per_page"})
        limit = min(int(raw), MAX_RESULTS)
        queue = request.query_value("queue")
        store = self._store()
        db = getattr(store, "db", None)
        if isinstance(db, sqlite3.Connection):
            jobs = find(db, field, text, queue, limit)
        elif isinstance(store, PostgresJobStore):
            found = await store.admin_queries().search(field, text, queue, limit, SEARCH_WINDOW)
            jobs = [to_wire(job) for job in found]
        else:
            raise Unsupported(
                "searching job contents needs the SQLite or PostgreSQL job store",
                details={"feature": "job search"},
            )
        return json_response(
            {"items": jobs, "searched": {"field": field, "text": text, "newest": SEARCH_WINDOW},
             "pagination": {"total": len(jobs), "page": 1, "per_page": limit}}
        )  # fmt: skip


def find(
    db: sqlite3.Connection, field: str, text: str, queue: str | None, limit: int
) -> list[dict[str, Any]]:
    """Matching jobs among the newest SEARCH_WINDOW, newest first."""
    sql = (
        "SELECT doc FROM (SELECT rowid, queue, doc FROM jobs ORDER BY rowid DESC LIMIT ?) "
        f"WHERE instr(lower(json_extract(CAST(doc AS TEXT), '$.{field}')), lower(?)) > 0"
    )
    args: list[Any] = [SEARCH_WINDOW, text]
    if queue:
        sql += " AND queue = ?"
        args.append(queue)
    rows = db.execute(sql + " ORDER BY rowid DESC LIMIT ?", (*args, limit)).fetchall()
    return [to_wire(from_record(orjson.loads(r[0]))) for r in rows]
