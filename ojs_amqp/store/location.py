"""What a `--store` value names: a SQLite file (a path or sqlite:///path) or a PostgreSQL
database (postgresql://…); and how a log line may show it."""

from __future__ import annotations

from urllib.parse import urlsplit

from ojs_amqp.store.base import StoreConfigError

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
            raise StoreConfigError(
                f"{location!r}: write a SQLite URL as sqlite:///relative/path or "
                "sqlite:////absolute/path"
            )
        return location[len("sqlite:///") :]
    if scheme in POSTGRES_SCHEMES:
        return None
    if "://" in location:
        raise StoreConfigError(
            f"{describe(location)!r} names no store we know: give a file path, sqlite:///path "
            "or postgresql://user@host/database"
        )
    return location


def check_location(location: str) -> None:
    """Raise StoreConfigError unless `location` names a store we can open (settings checks)."""
    if sqlite_path(location) is None:
        from ojs_amqp.store.postgres.options import parse

        parse(location)
