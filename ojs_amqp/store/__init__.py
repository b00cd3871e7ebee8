"""Job stores: the authority for state and the index by job id (DESIGN §2).

`open_store` picks the implementation a settings value names: `postgresql://…` (or
`postgres://…`) the PostgreSQL store, `sqlite:///path` or a plain path the SQLite file.
"""

from __future__ import annotations

from ojs_amqp.store.base import JobStore, StoreConfigError, StoreUnavailable
from ojs_amqp.store.location import check_location, describe, sqlite_path

__all__ = [
    "JobStore", "StoreConfigError", "StoreUnavailable", "check_location", "describe",
    "open_store", "sqlite_path",
]  # fmt: skip


def open_store(location: str) -> JobStore:
    """The store `location` names (not yet opened: the caller awaits `open()`)."""
    path = sqlite_path(location)
    if path is not None:
        from ojs_amqp.store.sqlite import SqliteJobStore

        return SqliteJobStore(path)
    from ojs_amqp.store.postgres import PostgresJobStore

    return PostgresJobStore(location)
