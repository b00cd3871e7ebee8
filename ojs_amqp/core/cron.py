"""Cron schedules: 5-field expressions, `@hourly`…`@yearly`, `@every <duration>`, IANA zones.

Field parsing and the walk across daylight-saving changes come from cronsim, which follows
Debian cron: a local time skipped by a spring-forward runs once right after the jump, and a
local time repeated by a fall-back runs once. `@every` runs at fixed intervals from an anchor
(the schedule's creation) and ignores zones, as an interval has no wall-clock meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ojs_amqp.core.durations import parse_duration_ms
from ojs_amqp.errors import InvalidRequest

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MIN_EVERY_MS = 1000


@dataclass(frozen=True, slots=True)
class CronSchedule:
    expression: str
    timezone: str
    #: The 5-field form, or None for `@every`.
    fields: str | None
    every_ms: int | None

    def next_after(self, after_ms: int, anchor_ms: int) -> int:
        """The first run strictly after `after_ms` (epoch milliseconds)."""
        if self.every_ms is not None:
            if after_ms < anchor_ms:
                return anchor_ms + self.every_ms
            periods = (after_ms - anchor_ms) // self.every_ms + 1
            return anchor_ms + periods * self.every_ms
        assert self.fields is not None
        zone = ZoneInfo(self.timezone)
        # cronsim works in whole minutes and returns times strictly after its start.
        start = datetime.fromtimestamp(after_ms / 1000, tz=UTC).astimezone(zone)
        start = start.replace(second=0, microsecond=0)
        for candidate in CronSim(self.fields, start):
            ms = int(candidate.timestamp() * 1000)
            if ms > after_ms:
                return ms
        raise InvalidRequest(f"cron expression {self.expression!r} never runs")


def parse_schedule(expression: str, timezone: str = "UTC") -> CronSchedule:
    """Validate an expression and a zone; raise InvalidRequest with the reason."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(
            f"timezone {timezone!r} is not an IANA time zone (e.g. 'Europe/Paris')",
            details={"field": "timezone"},
        ) from None
    text = " ".join(expression.split())
    if text.lower().startswith("@every"):
        try:
            every = parse_duration_ms(text[len("@every") :].strip())
        except ValueError as exc:
            raise InvalidRequest(f"invalid @every interval: {exc}") from None
        if every < MIN_EVERY_MS:
            raise InvalidRequest("an @every interval must be at least 1s")
        return CronSchedule(expression, timezone, None, every)
    fields = ALIASES.get(text.lower(), text)
    try:
        CronSim(fields, datetime.now(UTC))
    except CronSimError as exc:
        raise InvalidRequest(
            f"invalid cron expression {expression!r}: {exc}; use 5 fields "
            "(minute hour day-of-month month day-of-week), @hourly…@yearly or @every 5m",
            details={"field": "expression"},
        ) from None
    return CronSchedule(expression, timezone, fields, None)
