"""Search jobs by what their args or meta contain (`GET /ojs/v1/admin/search`), the
dashboard's most requested feature that the admin API's indexed filters cannot answer.

No index can serve "contains" over JSON, so a search reads the newest SEARCH_WINDOW jobs
of the store (newest first) and stops at the first page of matches: its cost is bounded
whatever the store holds, and the answer says how far it looked."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import orjson

from ojs_amqp.core.job import from_record, to_wire
from ojs_amqp.errors import InvalidRequest, Unsupported
from ojs_amqp.http.responses import json_response
from ojs_amqp.http.server import Request, Response

PATH = "/ojs/v1/admin/search"
#: How many of the newest jobs one search reads at most.
SEARCH_WINDOW = 100_000
MAX_RESULTS = 100
FIELDS = ("args", "meta")


class JobSearch:
    """Over the SQLite store's connection (other stores answer 422 `unsupported`)."""

    def __init__(self, connection: Callable[[], sqlite3.Connection | None]) -> None:
        self._connection = connection

    async def handle(self, request: Request) -> Response:
        text = (request.query_value("q") or "").strip()
        field = request.query_value("in") or "args"
        if not text:
            raise InvalidRequest("q must be the text to look for", details={"field": "q"})
        if field not in FIELDS:
            raise InvalidRequest("in must be args or meta", details={"field": "in"})
        raw = request.query_value("per_page") or "25"
        if not raw.isdigit() or int(raw) < 1:
            raise InvalidRequest("per_page must be a whole number", details={"field": "per_page"})
        limit = min(int(raw), MAX_RESULTS)
        db = self._connection()
        if db is None:
            raise Unsupported(
                "searching job contents needs the SQLite job store",
                details={"feature": "job search"},
            )
        jobs = find(db, field, text, request.query_value("queue"), limit)
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
