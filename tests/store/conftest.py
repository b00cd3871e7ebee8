from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ojs_amqp.store.base import JobStore
from ojs_amqp.store.postgres import PostgresJobStore
from ojs_amqp.store.sqlite import SqliteJobStore
from ojs_amqp.testing.store import MemoryJobStore
from tests.postgres import private_schema, require_postgres

KINDS = ["sqlite", "memory", "postgresql"]


@pytest.fixture
def postgres_store_url() -> Iterator[str]:
    """The URL of a PostgreSQL store in a schema of its own (dropped afterwards)."""
    with private_schema(require_postgres()) as url:
        yield url


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    """Every store implementation, opened fresh; the contract suite runs once per kind."""
    s: JobStore
    if request.param == "sqlite":
        s = SqliteJobStore(str(tmp_path / "jobs.db"))
    elif request.param == "memory":
        s = MemoryJobStore()
    else:
        s = PostgresJobStore(request.getfixturevalue("postgres_store_url"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def pg(postgres_store_url: str) -> AsyncIterator[PostgresJobStore]:
    store = PostgresJobStore(postgres_store_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
