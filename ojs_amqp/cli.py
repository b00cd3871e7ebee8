"""`ojs-amqp` command line: flags, each with an OJS_* environment variable as its default."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from ojs_amqp.amqp.broker import CONNECTION_ERRORS
from ojs_amqp.runtime import redact, serve
from ojs_amqp.settings import Settings

_DEFAULTS = Settings()


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


#: (flag, environment variable, default, type, help)
_OPTIONS: tuple[tuple[str, str, object, type, str], ...] = (
    ("--amqp-url", "OJS_AMQP_URL", _DEFAULTS.amqp_url, str, "RabbitMQ URL"),
    ("--http", "OJS_HTTP", _DEFAULTS.http_address, str, "HOST:PORT to listen on"),
    ("--store", "OJS_STORE", _DEFAULTS.store_path, str, "SQLite file of the job store"),
    ("--prefix", "OJS_PREFIX", _DEFAULTS.prefix, str, "prefix for every RabbitMQ name"),
    ("--prefetch", "OJS_PREFETCH", _DEFAULTS.prefetch, int,
     "unacked deliveries per job queue (buffered + leased)"),
    ("--fetch-wait-ms", "OJS_FETCH_WAIT_MS", _DEFAULTS.fetch_wait_ms, int,
     "how long an empty FETCH waits for a job"),
    ("--visibility-timeout-ms", "OJS_VISIBILITY_TIMEOUT_MS",
     _DEFAULTS.default_visibility_timeout_ms, int, "lease length when a job sets none"),
    ("--connect-attempts", "OJS_CONNECT_ATTEMPTS", _DEFAULTS.connect_attempts, int,
     "broker connection attempts at start before giving up"),
    ("--log-level", "OJS_LOG_LEVEL", _DEFAULTS.log_level, str, "DEBUG, INFO, WARNING, ERROR"),
)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ojs-amqp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="run the daemon")
    for flag, env_name, default, kind, text in _OPTIONS:
        serve_cmd.add_argument(
            flag, type=kind, default=kind(os.environ.get(env_name, default)),
            help=f"{text} (env {env_name}, default {default!r})",
        )  # fmt: skip
    serve_cmd.add_argument(
        "--test-mode",
        action="store_true",
        default=_env_bool("OJS_TEST_MODE"),
        help="DANGEROUS: enables POST /ojs/v1/admin/reset, which deletes every job "
        "(env OJS_TEST_MODE=1)",
    )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    host, _, port = args.http.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"ojs-amqp: --http must be HOST:PORT, got {args.http!r}")
    return Settings(
        amqp_url=args.amqp_url,
        http_host=host,
        http_port=int(port),
        store_path=args.store,
        prefix=args.prefix,
        test_mode=args.test_mode,
        prefetch=args.prefetch,
        fetch_wait_ms=args.fetch_wait_ms,
        default_visibility_timeout_ms=args.visibility_timeout_ms,
        connect_attempts=args.connect_attempts,
        log_level=args.log_level,
    )


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed: it halves the event loop's share of the CPU."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings_from(args)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        _run(serve(settings))
    except CONNECTION_ERRORS as exc:
        print(
            f"ojs-amqp: cannot reach the broker at {redact(settings.amqp_url)} "
            f"after {settings.connect_attempts} attempts: {exc}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
