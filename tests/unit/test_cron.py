from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from ojs_amqp.core.cron import parse_schedule
from ojs_amqp.errors import InvalidRequest

NY = ZoneInfo("America/New_York")


def _ms(*args: int, tz: ZoneInfo = NY, fold: int = 0) -> int:
    return int(datetime(*args, tzinfo=tz, fold=fold).timestamp() * 1000)  # type: ignore[misc]


def _local(ms: int, tz: ZoneInfo = NY) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=tz).isoformat()


def test_every_five_minutes_runs_on_the_next_multiple() -> None:
    s = parse_schedule("*/5 * * * *")
    start = _ms(2026, 5, 1, 12, 3, tz=ZoneInfo("UTC"))
    assert s.next_after(start, 0) == _ms(2026, 5, 1, 12, 5, tz=ZoneInfo("UTC"))


def test_the_next_run_is_strictly_after_a_run_time() -> None:
    s = parse_schedule("0 9 * * *", "Asia/Tokyo")
    tokyo = ZoneInfo("Asia/Tokyo")
    nine = _ms(2026, 5, 1, 9, 0, tz=tokyo)
    assert s.next_after(nine, 0) == _ms(2026, 5, 2, 9, 0, tz=tokyo)
    assert s.next_after(nine - 1, 0) == nine


@pytest.mark.parametrize(
    ("alias", "expected"),
    [("@hourly", (2026, 5, 1, 13, 0)), ("@daily", (2026, 5, 2, 0, 0)),
     ("@weekly", (2026, 5, 3, 0, 0)), ("@monthly", (2026, 6, 1, 0, 0)),
     ("@yearly", (2027, 1, 1, 0, 0))],
)  # fmt: skip
def test_aliases_mean_what_cron_means(alias: str, expected: tuple[int, ...]) -> None:
    utc = ZoneInfo("UTC")
    assert parse_schedule(alias).next_after(_ms(2026, 5, 1, 12, 30, tz=utc), 0) == _ms(
        *expected, tz=utc
    )


def test_a_time_skipped_by_spring_forward_runs_once_right_after_the_jump() -> None:
    s = parse_schedule("30 2 * * *", "America/New_York")
    first = s.next_after(_ms(2026, 3, 7, 12, 0), 0)
    second = s.next_after(first, 0)
    assert _local(first) == "2026-03-08T03:00:00-04:00"
    assert _local(second) == "2026-03-09T02:30:00-04:00"


def test_a_time_repeated_by_fall_back_runs_only_once() -> None:
    s = parse_schedule("30 1 * * *", "America/New_York")
    first = s.next_after(_ms(2026, 10, 31, 12, 0), 0)
    second = s.next_after(first, 0)
    assert _local(first) == "2026-11-01T01:30:00-04:00"
    assert _local(second) == "2026-11-02T01:30:00-05:00"


def test_hourly_across_fall_back_counts_real_hours() -> None:
    s = parse_schedule("0 * * * *", "America/New_York")
    t = _ms(2026, 11, 1, 0, 30)
    runs = []
    for _ in range(3):
        t = s.next_after(t, 0)
        runs.append(_local(t))
    assert runs[0] == "2026-11-01T01:00:00-04:00"
    assert runs[-1] == "2026-11-01T02:00:00-05:00"


def test_every_interval_counts_from_the_anchor() -> None:
    s = parse_schedule("@every 1h30m")
    assert s.next_after(0, 0) == 5_400_000
    assert s.next_after(5_400_000, 0) == 10_800_000
    assert s.next_after(-10, 0) == 5_400_000


@pytest.mark.parametrize(
    "expression",
    ["not a valid cron", "0 0 0 0 0 0 0", "99 25 32 13 8", "@every 0s", "@every x", ""],
)
def test_invalid_expressions_are_refused_with_a_reason(expression: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_schedule(expression)
    assert info.value.message


def test_unknown_time_zones_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="IANA"):
        parse_schedule("* * * * *", "Mars/Olympus")
