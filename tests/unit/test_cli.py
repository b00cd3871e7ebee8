"""Flags and their OJS_* environment variables reach the one Settings object."""

from __future__ import annotations

import pytest

from ojs_amqp.cli import _parser, settings_from
from ojs_amqp.runtime import broker_timeouts
from ojs_amqp.settings import Settings


def test_http_limits_come_from_flags_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = settings_from(_parser().parse_args(["serve"]))
    assert (defaults.http_request_timeout_ms, defaults.http_max_connections) == (30_000, 4096)

    monkeypatch.setenv("OJS_HTTP_MAX_CONNECTIONS", "50")
    args = _parser().parse_args(["serve", "--http-request-timeout-ms", "5000"])
    settings = settings_from(args)
    assert (settings.http_request_timeout_ms, settings.http_max_connections) == (5000, 50)


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--http-request-timeout-ms", "10"], "--http-request-timeout-ms must be at least 100"),
        (["--http-max-connections", "0"], "--http-max-connections must be at least 1"),
    ],
)
def test_http_limits_that_would_refuse_everything_are_rejected_at_start(
    flags: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit, match=complaint):
        settings_from(_parser().parse_args(["serve", *flags]))


def test_retention_takes_iso_durations_or_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    # The flags' defaults are written as ISO durations; they must stay the settings' own.
    defaults, expected = settings_from(_parser().parse_args(["serve"])), Settings()
    assert defaults.retention_completed_ms == expected.retention_completed_ms == 7 * 86_400_000
    assert defaults.retention_discarded_ms == expected.retention_discarded_ms == 30 * 86_400_000
    assert defaults.dead_letter_max_age_ms == expected.dead_letter_max_age_ms == 180 * 86_400_000

    monkeypatch.setenv("OJS_RETENTION_DISCARDED", "PT12H")
    args = _parser().parse_args(
        ["serve", "--retention-completed", "P1D", "--dead-letter-max-age", "90000",
         "--dead-letter-max-per-queue", "50"]
    )  # fmt: skip
    settings = settings_from(args)
    assert settings.retention_completed_ms == 86_400_000
    assert settings.retention_discarded_ms == 12 * 3_600_000
    assert settings.dead_letter_max_age_ms == 90_000
    assert settings.dead_letter_max_per_queue == 50


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--retention-completed", "a week"], "wants an ISO 8601 duration"),
        (["--retention-discarded", "PT0.5S"], "at least one second"),
        (["--dead-letter-max-per-queue", "0"], "at least 1"),
    ],
)
def test_retention_that_makes_no_sense_is_rejected_at_start(
    flags: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit, match=complaint):
        settings_from(_parser().parse_args(["serve", *flags]))


def test_broker_timeouts_come_from_flags_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults, expected = settings_from(_parser().parse_args(["serve"])), Settings()
    assert (
        defaults.amqp_connect_timeout_ms, defaults.amqp_channel_timeout_ms,
        defaults.amqp_declare_timeout_ms, defaults.amqp_confirm_timeout_ms,
        defaults.amqp_rpc_timeout_ms,
    ) == (
        expected.amqp_connect_timeout_ms, expected.amqp_channel_timeout_ms,
        expected.amqp_declare_timeout_ms, expected.amqp_confirm_timeout_ms,
        expected.amqp_rpc_timeout_ms,
    ) == (10_000, 5_000, 10_000, 10_000, 10_000)  # fmt: skip
    monkeypatch.setenv("OJS_AMQP_CONFIRM_TIMEOUT_MS", "2500")
    args = _parser().parse_args(["serve", "--amqp-connect-timeout-ms", "1500"])
    settings = settings_from(args)
    assert (settings.amqp_connect_timeout_ms, settings.amqp_confirm_timeout_ms) == (1500, 2500)
    timeouts = broker_timeouts(settings)
    assert (timeouts.connect_s, timeouts.channel_s, timeouts.confirm_s) == (1.5, 5.0, 2.5)


def test_a_broker_timeout_below_100_ms_is_rejected_at_start() -> None:
    with pytest.raises(SystemExit, match="--amqp-rpc-timeout-ms must be at least 100"):
        settings_from(_parser().parse_args(["serve", "--amqp-rpc-timeout-ms", "50"]))
