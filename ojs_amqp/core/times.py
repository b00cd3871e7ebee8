"""Timestamps on the wire: RFC 3339, UTC, millisecond precision, `Z` suffix."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


@lru_cache(maxsize=4096)
def _second_prefix(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def format_ms(epoch_ms: int) -> str:
    # Cached per second: formatting timestamps was ~5% of the daemon's CPU under load.
    seconds, millis = divmod(epoch_ms, 1000)
    return f"{_second_prefix(seconds)}{millis:03d}Z"


def parse_rfc3339_ms(text: str) -> int:
    """Parse an RFC 3339 timestamp into epoch milliseconds; a timezone is required."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError("timestamp must carry a timezone offset (e.g. 'Z')")
    return round(dt.timestamp() * 1000)
