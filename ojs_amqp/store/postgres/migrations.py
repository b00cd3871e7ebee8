"""Versioned schema for the PostgreSQL store: `sql/NNNN_*.sql`, applied in order, each in one
transaction with its row in `ojs_schema_version`.

An advisory lock serialises daemons that start at the same time against one database; a
database already at a newer version than this daemon knows is refused rather than used.
"""

from __future__ import annotations

import re
from importlib import resources

import asyncpg
from asyncpg.pool import PoolConnectionProxy

#: pg_advisory_xact_lock key while migrating (any constant; "ojs" in ASCII).
_LOCK_KEY = 0x6F6A73

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations() -> list[tuple[int, str]]:
    """(version, SQL) for every file in sql/, in version order; versions must run 1, 2, …"""
    found = []
    for entry in resources.files(__package__).joinpath("sql").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    found.sort()
    if [v for v, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"PostgreSQL migrations are not numbered 1..n: {[v for v, _ in found]}")
    return found


SCHEMA_VERSION = len(migrations())


async def migrate(conn: PoolConnectionProxy[asyncpg.Record]) -> int:
    """Bring the schema to SCHEMA_VERSION; returns the version found before."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS ojs_schema_version (version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = int(
            await conn.fetchval("SELECT coalesce(max(version), 0) FROM ojs_schema_version")
        )
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"the PostgreSQL store has schema version {current}, newer than this daemon "
                f"({SCHEMA_VERSION}); upgrade ojs-amqp"
            )
        for version, sql in migrations()[current:]:
            await conn.execute(sql)
            await conn.execute("INSERT INTO ojs_schema_version (version) VALUES ($1)", version)
    return current
