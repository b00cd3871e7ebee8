"""Timestamps on the wire: RFC 3339, UTC, millisecond precision, `Z` suffix."""

from __future__ import annotations

from datetime import UTC, datetime


def format_ms(epoch_ms: int) -> str:
    dt = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def parse_rfc3339_ms(text: str) -> int:
    """Parse an RFC 3339 timestamp into epoch milliseconds; a timezone is required."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError("timestamp must carry a timezone offset (e.g. 'Z')")
    return round(dt.timestamp() * 1000)
