"""What a `postgresql://` store URL may say beyond libpq's own fields: bounded waits and the
pool's size, read from (and removed from) the query string before asyncpg sees it (asyncpg
would send unknown parameters to the server as settings)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ojs_amqp.store.base import StoreConfigError


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    dsn: str
    #: Opening one connection (TCP, TLS, authentication) may take this long.
    connect_timeout_s: float = 5.0
    #: Any one statement, and waiting for a free pooled connection, may take this long.
    command_timeout_s: float = 10.0
    pool_size: int = 4
    #: 0 turns off prepared statements (pgbouncer in transaction pooling mode).
    statement_cache_size: int = 100

    @property
    def server_settings(self) -> dict[str, str]:
        """Names the daemon's sessions in pg_stat_activity unless the URL names them."""
        if "application_name" in dict(parse_qsl(urlsplit(self.dsn).query)):
            return {}
        return {"application_name": "ojs-amqp"}


_FLOATS = {"connect_timeout": "connect_timeout_s", "command_timeout": "command_timeout_s"}
_INTS = {"pool_size": "pool_size", "statement_cache_size": "statement_cache_size"}


def parse(url: str) -> PostgresOptions:
    """Split our parameters off the URL; a bad value is a clear error at start."""
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    values: dict[str, float | int] = {}
    for key, raw in parse_qsl(parts.query, keep_blank_values=True):
        try:
            if key in _FLOATS:
                values[_FLOATS[key]] = float(raw)
                if values[_FLOATS[key]] <= 0:
                    raise ValueError
            elif key in _INTS:
                values[_INTS[key]] = int(raw)
                if values[_INTS[key]] < (1 if key == "pool_size" else 0):
                    raise ValueError
            else:
                kept.append((key, raw))
        except ValueError:
            raise StoreConfigError(f"{key}={raw!r} is not a valid value in the store URL") from None
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment))
    return PostgresOptions(dsn, **values)  # type: ignore[arg-type]
