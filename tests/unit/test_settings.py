"""Settings: every value is checked where it is built, each setting is declared once, and the
README's configuration table is the one made from those declarations."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ojs_amqp import settings_table
from ojs_amqp.cli import _parser, settings_from
from ojs_amqp.settings import Settings, Token
from ojs_amqp.settings_schema import SECTIONS, SettingsError, declared, option_of

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_table_is_the_one_made_from_the_settings() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert settings_table.render() in readme, (
        "README.md's configuration table differs from ojs_amqp/settings.py; "
        "run `python -m ojs_amqp.settings_table --write`"
    )


def test_the_table_command_checks_and_rewrites_a_readme(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"intro\n{settings_table.BEGIN}\n| old | row |\n{settings_table.END}\nrest\n")
    command = [sys.executable, "-m", "ojs_amqp.settings_table", "--readme", str(stale)]
    checked = subprocess.run([*command, "--check"], capture_output=True, text=True, check=False)
    assert checked.returncode == 1 and "--write" in checked.stderr
    assert subprocess.run([*command, "--write"], check=False).returncode == 0
    text = stale.read_text()
    assert text.startswith("intro\n") and text.endswith("\nrest\n") and "| old |" not in text
    assert "| `--prefetch` | `OJS_PREFETCH` | `1000` |" in text
    assert subprocess.run([*command, "--check"], check=False).returncode == 0


def test_every_field_is_declared_with_a_section_and_flags_and_variables_are_unique() -> None:
    for field in dataclasses.fields(Settings):
        option = option_of(field)
        assert option is not None, f"Settings.{field.name}: declare it with setting(...)"
        assert option.section in SECTIONS, field.name
        assert (option.flag is None) == (option.env is None), field.name
    flags = [o.flag for _, o in declared(Settings).values() if o.flag]
    envs = [o.env for _, o in declared(Settings).values() if o.env]
    assert len(flags) == len(set(flags)) and len(envs) == len(set(envs))


def test_serve_has_exactly_the_declared_flags() -> None:
    serve = _parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    served = {s for action in serve._actions for s in action.option_strings} - {"-h", "--help"}
    assert served == {o.flag for _, o in declared(Settings).values() if o.flag}


def test_a_default_written_as_text_is_the_settings_own_default() -> None:
    defaults = Settings()
    for name, (_, option) in declared(Settings).items():
        if option.parse is None or not option.default_text or option.default_text == "unbounded":
            continue
        value = option.parse(option.default_text)
        expected = tuple(getattr(defaults, f) for f in option.fills) if option.fills else None
        assert value == (expected if option.fills else getattr(defaults, name)), name


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"delivery_hold_ms": 999}, "delivery_hold_ms", "must be at least 1000, got 999"),
        ({"amqp_rpc_timeout_ms": 50}, "amqp_rpc_timeout_ms", "must be at least 100"),
        ({"prefetch": "10"}, "prefetch", "must be an integer, got '10'"),
        ({"prefetch": True}, "prefetch", "must be an integer"),
        ({"test_mode": 1}, "test_mode", "must be true or false"),
        ({"http_port": 70_000}, "http_port", "must be at most 65535"),
        ({"log_format": "xml"}, "log_format", "must be one of text, json, got 'xml'"),
        ({"log_level": "LOUD"}, "log_level", "must be DEBUG, INFO"),
        ({"response_media_type": "text/plain"}, "response_media_type", "must be one of"),
        ({"retention_completed_ms": 10}, "retention_completed_ms", "at least one second"),
        ({"max_depth": (("email", -1),)}, "max_depth", "(queue, bound >= 0) pairs"),
        ({"auth_tokens": ("admin:" + "s" * 20,)}, "auth_tokens", "Token(scope, secret)"),
        ({"amqp_url": None}, "amqp_url", "must be a str"),
    ],
)
def test_a_bad_value_made_in_code_is_refused_naming_the_field(
    changes: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(**changes)
    assert caught.value.name == field
    assert str(caught.value).startswith(f"Settings.{field} ") and problem in str(caught.value)


def test_good_values_made_in_code_are_kept() -> None:
    settings = Settings(
        prefetch=0, log_level="debug", max_depth=(("*", 10), ("email", 0)), http_port=0,
        auth_tokens=(Token("admin", "s" * 20),), delivery_hold_ms=1000,
    )  # fmt: skip
    assert (settings.prefetch, settings.log_level, settings.max_depth_for("x")) == (0, "debug", 10)


def test_settings_take_keywords_only() -> None:
    with pytest.raises(TypeError):
        Settings("amqp://elsewhere/")  # type: ignore[misc]


def test_a_bad_value_from_the_environment_names_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OJS_PREFETCH", "-1")
    with pytest.raises(SystemExit, match=r"^ojs-amqp: --prefetch must be at least 0, got -1$"):
        settings_from(_parser().parse_args(["serve"]))
    monkeypatch.setenv("OJS_PREFETCH", "many")
    with pytest.raises(SystemExit, match="--prefetch must be an integer, got 'many'"):
        settings_from(_parser().parse_args(["serve"]))
    monkeypatch.delenv("OJS_PREFETCH")
    with pytest.raises(SystemExit, match="--http must be HOST:PORT, got 'nowhere'"):
        settings_from(_parser().parse_args(["serve", "--http", "nowhere"]))
    monkeypatch.setenv("OJS_LOG_FORMAT", "xml")
    with pytest.raises(SystemExit, match="--log-format must be one of text, json"):
        settings_from(_parser().parse_args(["serve"]))


def test_flags_beat_the_environment_which_beats_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    defaults = settings_from(_parser().parse_args(["serve"]))
    assert defaults == Settings()
    monkeypatch.setenv("OJS_HTTP", "0.0.0.0:9000")
    monkeypatch.setenv("OJS_FETCH_WAIT_MS", "250")
    monkeypatch.setenv("OJS_TEST_MODE", "yes")
    monkeypatch.setenv("OJS_MAX_DEPTH", "100,email=5")
    monkeypatch.setenv("OJS_AUTH_TOKENS", "worker:" + "w" * 20)
    settings = settings_from(_parser().parse_args(["serve", "--fetch-wait-ms", "500"]))
    assert (settings.http_host, settings.http_port, settings.fetch_wait_ms) == (
        "0.0.0.0",
        9000,
        500,
    )
    assert settings.test_mode and settings.max_depth == (("*", 100), ("email", 5))
    assert settings.auth_tokens == (Token("worker", "w" * 20),)
    # A tokens file wins over the tokens in the environment
    tokens = tmp_path / "tokens"
    tokens.write_text("admin:" + "a" * 20 + "\n")
    from_file = settings_from(_parser().parse_args(["serve", "--auth-tokens-file", str(tokens)]))
    assert from_file.auth_tokens == (Token("admin", "a" * 20),)
    with pytest.raises(SystemExit, match="cannot read --auth-tokens-file"):
        settings_from(_parser().parse_args(["serve", "--auth-tokens-file", str(tmp_path / "no")]))
    monkeypatch.setenv("OJS_AUTH_TOKENS", "admin:short")
    bad = r"--auth-tokens-file \(or OJS_AUTH_TOKENS\) holds a bad token: each token must"
    with pytest.raises(SystemExit, match=bad):
        settings_from(_parser().parse_args(["serve"]))
