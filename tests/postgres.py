"""The PostgreSQL the tests use: OJS_TEST_POSTGRES_URL (default the local server), and one
private schema per test (both CI passes run at once against the same database).

Without a server the tests that need one fail, so a run cannot pass with the PostgreSQL half
missing; OJS_TEST_NO_POSTGRES=1 skips them instead, on purpose (never set by .ci/run).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest

POSTGRES_URL = os.environ.get(
    "OJS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def admin_connect(url: str = POSTGRES_URL) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, connect_timeout=5, autocommit=True)


def require_postgres() -> str:
    try:
        with admin_connect() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        if os.environ.get("OJS_TEST_NO_POSTGRES") == "1":
            pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL} (OJS_TEST_NO_POSTGRES=1)")
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({exc}); OJS_TEST_NO_POSTGRES=1 skips"
        )
    return POSTGRES_URL


@contextlib.contextmanager
def private_schema(base_url: str = POSTGRES_URL) -> Iterator[str]:
    """A store URL whose tables live in a new schema, dropped (with them) afterwards."""
    schema = f"ojs_test_{uuid.uuid4().hex[:12]}"
    with admin_connect(base_url) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_query(base_url, search_path=schema)
    finally:
        with admin_connect(base_url) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def schema_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["search_path"]
