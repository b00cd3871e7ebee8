"""`ojs-amqp` command line: flags, each with an OJS_* environment variable as its default."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from ojs_amqp import admin, settings_schema
from ojs_amqp.amqp.failures import CONNECTION_ERRORS
from ojs_amqp.errors import describe
from ojs_amqp.logs import configure, redact
from ojs_amqp.runtime import serve
from ojs_amqp.settings import Settings
from ojs_amqp.settings_schema import Option, SettingsError, declared, parse_text, shown_default
from ojs_amqp.store import StoreUnavailable
from ojs_amqp.tls import TlsConfigError, ssl_cause


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _help(field: dataclasses.Field[Any], option: Option) -> str:
    env = f"env {option.env}" + (f", or the value itself in {option.value_env}"
                                 if option.value_env else "")  # fmt: skip
    if option.switch:
        return f"{option.help} ({env}=1)"
    return f"{option.help} ({env}, default {shown_default(field, option)})"


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    """One option per declared setting with a flag (settings.py); unset ones stay None, so
    that the environment, then the setting's default, apply."""
    for name, (field, option) in declared(Settings).items():
        if option.flag is None:
            continue
        if option.switch:
            parser.add_argument(option.flag, dest=name, action="store_true", default=None,
                                help=_help(field, option))  # fmt: skip
        else:
            metavar = "PATH" if option.from_file else option.flag[2:].upper().replace("-", "_")
            parser.add_argument(option.flag, dest=name, default=None, metavar=metavar,
                                choices=option.choices or None,
                                help=_help(field, option))  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ojs-amqp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="run the daemon")
    _add_setting_options(serve_cmd)
    admin.add_commands(sub)
    _add_worker_command(sub)
    return parser


def _add_worker_command(sub: Any) -> None:
    """`ojs-amqp worker MODULE:ATTR`: a native AMQP worker (ojs_amqp.sdk, docs/sdk.md)."""
    cmd = sub.add_parser("worker", help="run a native AMQP worker with your handlers")
    cmd.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="a ojs_amqp.sdk.Worker, or a dict of job type -> handler",
    )
    cmd.add_argument(
        "--queue",
        dest="queues",
        action="append",
        help="queue to consume; repeat for several (default: the Worker's, else 'default')",
    )
    cmd.add_argument("--concurrency", type=int, help="jobs at once = prefetch (default 10)")
    cmd.add_argument(
        "--grace-period",
        type=float,
        help="seconds running jobs get to finish on SIGTERM (default 30)",
    )
    cmd.add_argument(
        "--heartbeat-interval",
        type=float,
        help="seconds between heartbeats of a long job (default 5)",
    )
    cmd.add_argument(
        "--prefetch",
        type=int,
        help="unacked deliveries per queue (default 3 x concurrency)",
    )
    cmd.add_argument(
        "--report-batch-ms",
        type=float,
        help="send the reports of jobs finished within this many ms together (default 5; "
        "0 = only those finished in the same event-loop turn)",
    )
    cmd.add_argument(
        "--report-batch-max",
        type=int,
        help="reports per batch at most (default 100, at most 1000; 1 = never batch)",
    )
    settings = declared(Settings)
    for name in ("amqp_url", "prefix"):  # unset: a Worker's own setting stands
        field, option = settings[name]
        assert option.flag is not None and option.env is not None
        cmd.add_argument(
            option.flag, dest=name, default=os.environ.get(option.env),
            help=f"{option.help} (env {option.env}, default: the Worker's, else "
            f"{field.default!r})",
        )  # fmt: skip
    for name in ("log_level", "log_format"):
        field, option = settings[name]
        assert option.flag is not None and option.env is not None
        cmd.add_argument(
            option.flag, dest=name, default=os.environ.get(option.env, field.default),
            choices=option.choices or None, help=_help(field, option),
        )  # fmt: skip


def settings_from(args: argparse.Namespace) -> Settings:
    """The Settings of `ojs-amqp serve`: each setting from its flag, else its environment
    variable, else its default; a bad value stops the daemon with a message naming the flag."""
    values: dict[str, Any] = {}
    for name, (field, option) in declared(Settings).items():
        if option.flag is None:
            continue
        text = _given(args, name, option)
        if text is None:
            continue
        if option.switch:
            values[name] = text
            continue
        try:
            value = parse_text(field, option, text)
        except ValueError as exc:
            raise SystemExit(f"ojs-amqp: {option.flag} {exc}") from None
        values.update(zip(option.fills, value, strict=True) if option.fills else [(name, value)])
    try:
        return Settings(**values)
    except SettingsError as exc:
        flag = exc.option.flag if exc.option and exc.option.flag else exc.name
        raise SystemExit(f"ojs-amqp: {flag} {exc.problem}") from None


def _given(args: argparse.Namespace, name: str, option: Option) -> Any:
    """The flag's value, else the environment's (text; True for a switch), else None."""
    given = getattr(args, name, None)
    if option.switch:
        return True if given else (True if option.env and _env_bool(option.env) else None)
    if given is None and option.env:
        given = os.environ.get(option.env)
    if option.from_file:
        if given:
            return _read(option.flag or name, given)
        return os.environ.get(option.value_env) if option.value_env else None
    return given


def _read(flag: str, path: str) -> str:
    """Secrets come from a file or the environment, never from a flag (flags show in `ps`)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise SystemExit(f"ojs-amqp: cannot read {flag}: {exc}") from None


def parse_max_depth(spec: str) -> tuple[tuple[str, int], ...]:
    """'1000,email=50' -> (("*", 1000), ("email", 50)); SystemExit when malformed."""
    try:
        return settings_schema.max_depth(spec)
    except ValueError as exc:
        raise SystemExit(f"ojs-amqp: --max-depth {exc}") from None


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed: it halves the event loop's share of the CPU."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _check_exposure(settings: Settings) -> None:
    """Refuse set-ups that expose the API by accident."""
    if settings.listens_on_loopback_only:
        return
    if settings.test_mode:
        raise SystemExit("ojs-amqp: --test-mode is only allowed on a loopback address")
    if not settings.auth_tokens and not settings.allow_unauthenticated:
        raise SystemExit(
            f"ojs-amqp: refusing to listen on {settings.http_address} without authentication; "
            "give tokens (--auth-tokens-file / OJS_AUTH_TOKENS) or pass --allow-unauthenticated"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if admin.handles(args):
        return admin.run(args)
    if args.command == "worker":
        from ojs_amqp.sdk.runner import run_worker

        return run_worker(args, _run)
    settings = settings_from(args)
    _check_exposure(settings)
    configure(settings.log_level, settings.log_format)
    try:
        _run(serve(settings))
    except (TlsConfigError, StoreUnavailable) as exc:
        print(f"ojs-amqp: {exc}", file=sys.stderr)
        return 2
    except CONNECTION_ERRORS as exc:
        if (tls_error := ssl_cause(exc)) is not None:
            print(
                f"ojs-amqp: TLS handshake with the broker at {redact(settings.amqp_url)} "
                f"failed: {tls_error}; check --amqp-ca (the CA that signed the broker's "
                "certificate), --amqp-cert/--amqp-key (the broker may demand a client "
                "certificate) and the URL's host name (it must match the broker's certificate)",
                file=sys.stderr,
            )
            return 2
        attempts = settings.connect_attempts
        print(
            f"ojs-amqp: cannot reach the broker at {redact(settings.amqp_url)} after "
            f"{attempts} attempt{'s' if attempts != 1 else ''}: {describe(exc)}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
