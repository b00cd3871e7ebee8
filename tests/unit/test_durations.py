"""Durations: ISO 8601, Go-style, bare seconds and integer milliseconds, all to ms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ojs_amqp.core.durations import MAX_DURATION_MS, format_duration_ms, parse_duration_ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("PT1S", 1000),
        ("PT0.5S", 500),
        ("PT0.001S", 1),
        ("PT5M", 300_000),
        ("PT1H", 3_600_000),
        ("PT1H30M", 5_400_000),
        ("P1D", 86_400_000),
        ("P1DT2H", 93_600_000),
        ("P2W", 1_209_600_000),
        ("PT0S", 0),
        ("pt1s", 1000),
        ("  PT2S  ", 2000),
    ],
)
def test_iso_8601_durations_are_parsed_to_milliseconds(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("30s", 30_000),
        ("1m", 60_000),
        ("1h30m", 5_400_000),
        ("1m5s", 65_000),
        ("1.5s", 1500),
        ("2h0m1ms", 7_200_001),
        ("10S", 10_000),
    ],
)
def test_go_style_durations_are_parsed_to_milliseconds(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


def test_integer_milliseconds_are_taken_as_is() -> None:
    assert parse_duration_ms(1500) == 1500


def test_float_milliseconds_are_truncated_to_an_integer() -> None:
    assert parse_duration_ms(1500.9) == 1500


@pytest.mark.parametrize(
    "bad",
    ["", "P", "PT", "P1DT", "P1M", "1x", "-1s", "-PT1S", "1m30", "s", "ms", "PT1S extra", "abc"],
)
def test_unparseable_duration_strings_raise_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(bad)


@pytest.mark.parametrize("bad", [-1, -0.5])
def test_negative_numbers_are_not_durations(bad: float) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration_ms(bad)


@pytest.mark.parametrize("bad", [True, False])
def test_booleans_are_not_durations(bad: bool) -> None:
    with pytest.raises(ValueError, match="boolean"):
        parse_duration_ms(bad)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "PT0S"),
        (1000, "PT1S"),
        (250, "PT0.25S"),
        (1500, "PT1.5S"),
        (1001, "PT1.001S"),
        (30_000, "PT30S"),
        (90_000, "PT90S"),
        (300_000, "PT5M"),
        (3_600_000, "PT1H"),
        (5_400_000, "PT90M"),
        (1_234_567, "PT1234.567S"),
    ],
)
def test_durations_are_formatted_as_iso_8601(ms: int, text: str) -> None:
    assert format_duration_ms(ms) == text


@given(st.integers(min_value=0, max_value=MAX_DURATION_MS))
def test_formatting_then_parsing_gives_back_the_same_milliseconds(ms: int) -> None:
    assert parse_duration_ms(format_duration_ms(ms)) == ms


def test_durations_longer_than_a_century_are_refused() -> None:
    for value in (
        MAX_DURATION_MS + 1,
        f"PT{MAX_DURATION_MS // 1000 + 1}S",
        "P40000D",
        float("nan"),
    ):
        with pytest.raises(ValueError):
            parse_duration_ms(value)


@given(st.integers(min_value=0, max_value=10**9))
def test_go_style_millisecond_strings_parse_exactly(ms: int) -> None:
    assert parse_duration_ms(f"{ms}ms") == ms
