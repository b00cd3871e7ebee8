"""Durations in every dialect the OJS documents use, normalised to milliseconds.

ISO 8601 (`PT1S`, `PT0.5S`, `P1DT2H`, `P2W`), Go-style (`1h30m`, `500ms`), bare seconds
(`"30s"`, as in the core examples) and integer milliseconds (the HTTP `*_ms` fields).
"""

from __future__ import annotations

import re

_ISO = re.compile(
    r"^P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_GO = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|h|m|s))+$")
#: Longer durations are refused: they would overflow timestamps and AMQP header integers.
MAX_DURATION_MS = 100 * 366 * 86_400_000
_UNIT_MS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000}
_GO_UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}


def parse_duration_ms(value: str | int | float) -> int:
    """Return the duration in milliseconds; raise ValueError on anything unparseable or
    longer than a century."""
    ms = _parse(value)
    if ms > MAX_DURATION_MS:
        raise ValueError(f"duration {value!r} is longer than 100 years")
    return ms


def _parse(value: str | int | float) -> int:
    if isinstance(value, bool):
        raise ValueError("a duration cannot be a boolean")
    if isinstance(value, int | float):
        if not value >= 0:  # also refuses NaN
            raise ValueError("a duration cannot be negative")
        if value > MAX_DURATION_MS:
            raise ValueError(f"duration {value!r} is longer than 100 years")
        return int(value)
    text = value.strip()
    iso = _ISO.match(text.upper())
    if iso and text.upper() not in ("P", "PT") and not text.upper().endswith("T"):
        total = 0.0
        for unit, amount in iso.groupdict().items():
            if amount is not None:
                total += float(amount) * _UNIT_MS[unit]
        return round(total)
    lowered = text.lower()
    if _GO.match(lowered):
        return round(sum(float(n) * _GO_UNIT_MS[u] for n, u in _GO_PART.findall(lowered)))
    raise ValueError(f"not a duration: {value!r}")


def format_duration_ms(ms: int) -> str:
    """ISO 8601 form used when echoing policies back (`PT1S`, `PT0.25S`, `PT5M`)."""
    if ms % 60_000 == 0 and ms >= 60_000:
        if ms % 3_600_000 == 0:
            return f"PT{ms // 3_600_000}H"
        return f"PT{ms // 60_000}M"
    if ms % 1000 == 0:
        return f"PT{ms // 1000}S"
    # Exact: `:g` would keep only six significant digits (1234567 -> "PT1234.57S").
    return f"PT{ms // 1000}.{ms % 1000:03d}".rstrip("0") + "S"
