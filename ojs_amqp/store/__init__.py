"""Job stores: the authority for state and the index by job id (DESIGN §2).

`open_store` picks the implementation a settings value names: `postgresql://…` (or
`postgres://…`) the PostgreSQL store, `sqlite:///path` or a plain path the SQLite file.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ojs_amqp.errors import InvalidRequest
from ojs_amqp.store.base import JobStore

__all__ = ["JobStore", "describe", "open_store", "sqlite_path"]

POSTGRES_SCHEMES = ("postgresql", "postgres")


def describe(location: str) -> str:
    """The location as a log line may show it: a URL's password is replaced by ***."""
    parts = urlsplit(location)
    if parts.scheme in POSTGRES_SCHEMES and parts.password is not None:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()
    return location


def sqlite_path(location: str) -> str | None:
    """The SQLite file a location names, or None when it names another store."""
    scheme = urlsplit(location).scheme
    if scheme == "sqlite":
        if not location.startswith("sqlite:///") or len(location) == len("sqlite:///"):
            raise InvalidRequest(
                f"--store {location!r}: write a SQLite URL as sqlite:///relative/path or "
                "sqlite:////absolute/path"
            )
        return location[len("sqlite:///") :]
    if scheme in POSTGRES_SCHEMES:
        return None
    if "://" in location:
        raise InvalidRequest(
            f"--store {describe(location)!r}: unknown store; give a file path, sqlite:///path "
            "or postgresql://user@host/database"
        )
    return location


def open_store(location: str) -> JobStore:
    """The store `location` names (not yet opened: the caller awaits `open()`)."""
    path = sqlite_path(location)
    if path is not None:
        from ojs_amqp.store.sqlite import SqliteJobStore

        return SqliteJobStore(path)
    from ojs_amqp.store.postgres import PostgresJobStore

    return PostgresJobStore(location)
