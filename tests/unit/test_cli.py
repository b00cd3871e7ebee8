"""Flags and their OJS_* environment variables reach the one Settings object."""

from __future__ import annotations

import pytest

from ojs_amqp.cli import _parser, settings_from


def test_http_limits_come_from_flags_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = settings_from(_parser().parse_args(["serve"]))
    assert (defaults.http_request_timeout_ms, defaults.http_max_connections) == (30_000, 4096)

    monkeypatch.setenv("OJS_HTTP_MAX_CONNECTIONS", "50")
    args = _parser().parse_args(["serve", "--http-request-timeout-ms", "5000"])
    settings = settings_from(args)
    assert (settings.http_request_timeout_ms, settings.http_max_connections) == (5000, 50)


@pytest.mark.parametrize(
    "flags", [["--http-request-timeout-ms", "10"], ["--http-max-connections", "0"]]
)
def test_http_limits_that_would_refuse_everything_are_rejected_at_start(flags: list[str]) -> None:
    with pytest.raises(SystemExit, match="--http-request-timeout-ms must be at least 100"):
        settings_from(_parser().parse_args(["serve", *flags]))
