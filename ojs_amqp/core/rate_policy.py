"""Rate-limit policies (ojs-rate-limiting §6, §7.2) in the dialects producers send.

- Keyed, the spec's: `{key, concurrency?, rate?: {limit, period}, throttle?: {limit,
  period}, on_limit?: wait|reschedule|drop}`.
- The ext suite's shorthand: `{key, rate: 1, period: "second"}` (a bare count with a
  sibling period; `second`, `minute`, `hour` and `day` are read as PT1S ... P1D).
- The level-4 suite's and OpenAPI's queue dialect: `{max_per_second: N}` with no key,
  which limits the job's queue (key `queue:{name}`); with a key it limits that key.

Structural problems are 400 invalid_request, values out of range 422 validation_error, as
for the rest of the envelope. How each limit is metered is core/rate_limits.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ojs_amqp.core.durations import format_duration_ms, parse_duration_ms
from ojs_amqp.errors import InvalidRequest, ValidationFailed

KEY_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._:-]*$")
MAX_KEY_BYTES = 255
#: Counts above this would make the pacing interval round to zero milliseconds.
MAX_LIMIT = 1_000_000
_PERIOD_WORDS = {"second": 1000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
_FIELDS = frozenset(
    {"key", "concurrency", "rate", "throttle", "on_limit", "period", "max_per_second"}
)


class OnLimit(StrEnum):
    WAIT = "wait"
    RESCHEDULE = "reschedule"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Pace:
    """`limit` starts per `period_ms`, at most `burst` of them back to back."""

    limit: int
    period_ms: int
    burst: int

    def __post_init__(self) -> None:
        if self.limit < 1 or self.period_ms < 1 or not 1 <= self.burst <= self.limit:
            raise ValueError(f"not a pace: {self!r}")

    @property
    def interval_ms(self) -> int:
        """Time one start uses up; rounded up, so the pace is never faster than asked."""
        return -(-self.period_ms // self.limit)

    def to_wire(self) -> dict[str, Any]:
        return {"limit": self.limit, "period": format_duration_ms(self.period_ms)}


@dataclass(frozen=True, slots=True)
class RatePolicy:
    key: str
    concurrency: int | None = None
    #: Window-style limit: up to `limit` at once, refilled evenly over the period.
    rate: Pace | None = None
    #: Even spacing: one start per interval (burst 1). `max_per_second` is one of these.
    throttle: Pace | None = None
    on_limit: OnLimit = OnLimit.WAIT

    def __post_init__(self) -> None:
        if self.concurrency is None and self.rate is None and self.throttle is None:
            raise ValueError(f"rate limit policy {self.key!r} sets no limit")

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "on_limit": self.on_limit.value}
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        if self.rate is not None:
            out["rate"] = self.rate.to_wire()
        if self.throttle is not None:
            out["throttle"] = self.throttle.to_wire()
        return out


def queue_key(queue: str) -> str:
    """The key of a queue-level limit (§7.1's `queue:{name}` pattern)."""
    return f"queue:{queue}"


def parse_rate_limit(raw: Any, queue: str, field: str = "rate_limit") -> RatePolicy:
    """A job's `rate_limit` option (or a queue's configuration, with `queue` its name)."""
    if not isinstance(raw, dict):
        raise _structure(field, "must be an object")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise _structure(
            f"{field}.{unknown[0]}", f"is not a rate limit field ({', '.join(sorted(_FIELDS))})"
        )
    key = _key(raw, queue, field)
    rate, throttle = _paces(raw, field)
    concurrency = _count(raw.get("concurrency"), f"{field}.concurrency", minimum=0)
    if concurrency is None and rate is None and throttle is None:
        raise _structure(field, "sets no limit: give concurrency, rate, throttle or max_per_second")
    return RatePolicy(
        key=key,
        concurrency=concurrency,
        rate=rate,
        throttle=throttle,
        on_limit=_on_limit(raw.get("on_limit"), f"{field}.on_limit"),
    )


def _key(raw: dict[str, Any], queue: str, field: str) -> str:
    key = raw.get("key")
    if key is None:
        if "max_per_second" not in raw:
            raise _structure(
                f"{field}.key",
                "is required (only the queue shorthand {max_per_second} may leave it out)",
            )
        return queue_key(queue)
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise _structure(
            f"{field}.key", "must match ^[a-zA-Z0-9][a-zA-Z0-9._:-]*$ (e.g. 'stripe-api')"
        )
    if len(key.encode()) > MAX_KEY_BYTES:
        raise _structure(f"{field}.key", f"is longer than {MAX_KEY_BYTES} bytes")
    return key


def _paces(raw: dict[str, Any], field: str) -> tuple[Pace | None, Pace | None]:
    rate_raw, period = raw.get("rate"), raw.get("period")
    if period is not None and not _is_count(rate_raw):
        raise _structure(f"{field}.period", "goes with a bare count in rate (rate: 1)")
    rate: Pace | None = None
    if _is_count(rate_raw):
        limit = _count(rate_raw, f"{field}.rate", minimum=1)
        assert limit is not None
        period_ms = _period(period if period is not None else "second", f"{field}.period")
        rate = Pace(limit, period_ms, burst=limit)
    elif rate_raw is not None:
        rate = _pace(rate_raw, f"{field}.rate", even=False)
    throttle = _pace(raw["throttle"], f"{field}.throttle", even=True) if (
        raw.get("throttle") is not None
    ) else None  # fmt: skip
    per_second = _count(raw.get("max_per_second"), f"{field}.max_per_second", minimum=1)
    if per_second is not None:
        if throttle is not None:
            raise _structure(f"{field}.max_per_second", "and throttle say the same thing; give one")
        throttle = Pace(per_second, 1000, burst=1)
    return rate, throttle


def _pace(value: Any, field: str, *, even: bool) -> Pace:
    if not isinstance(value, dict) or set(value) - {"limit", "period"}:
        raise _structure(field, "must be an object {limit, period}")
    if "limit" not in value or "period" not in value:
        raise _structure(field, "needs both limit and period")
    limit = _count(value["limit"], f"{field}.limit", minimum=1)
    assert limit is not None
    period_ms = _period(value["period"], f"{field}.period")
    return Pace(limit, period_ms, burst=1 if even else limit)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any, field: str, *, minimum: int) -> int | None:
    if value is None:
        return None
    if not _is_count(value):
        raise _structure(field, "must be an integer")
    if not minimum <= value <= MAX_LIMIT:
        raise ValidationFailed(
            f"{field} must be between {minimum} and {MAX_LIMIT}", details={"field": field}
        )
    return int(value)


def _period(value: Any, field: str) -> int:
    if isinstance(value, str) and value.strip().lower() in _PERIOD_WORDS:
        return _PERIOD_WORDS[value.strip().lower()]
    if not isinstance(value, str):
        raise _structure(field, "must be an ISO 8601 duration such as 'PT1M', or 'second'")
    try:
        ms = parse_duration_ms(value)
    except ValueError as exc:
        raise _structure(field, f"{exc}; use an ISO 8601 duration such as 'PT1M'") from None
    if ms <= 0:
        raise ValidationFailed(f"{field} must be longer than zero", details={"field": field})
    return ms


def _on_limit(value: Any, field: str) -> OnLimit:
    if value is None:
        return OnLimit.WAIT
    try:
        return OnLimit(value)
    except ValueError:
        raise _structure(field, f"must be one of {', '.join(OnLimit)}") from None


def _structure(field: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{field} {problem}", details={"field": field})
