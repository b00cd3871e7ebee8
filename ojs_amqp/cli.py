"""`ojs-amqp` command line: flags, each with an OJS_* environment variable as its default."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from ojs_amqp.amqp.broker import CONNECTION_ERRORS
from ojs_amqp.runtime import redact, serve
from ojs_amqp.settings import Settings

_DEFAULTS = Settings()


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="ojs-amqp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the daemon")
    s.add_argument("--amqp-url", default=env("OJS_AMQP_URL", _DEFAULTS.amqp_url))
    s.add_argument("--http", default=env("OJS_HTTP", _DEFAULTS.http_address),
                   help="HOST:PORT to listen on")  # fmt: skip
    s.add_argument("--store", default=env("OJS_STORE", _DEFAULTS.store_path),
                   help="SQLite file of the job store")  # fmt: skip
    s.add_argument("--prefix", default=env("OJS_PREFIX", _DEFAULTS.prefix),
                   help="prefix for every RabbitMQ name")  # fmt: skip
    s.add_argument("--test-mode", action="store_true", default=_env_bool("OJS_TEST_MODE"),
                   help="DANGEROUS: enable POST /ojs/v1/admin/reset, which deletes everything")  # fmt: skip
    s.add_argument("--prefetch", type=int, default=int(env("OJS_PREFETCH", _DEFAULTS.prefetch)))
    s.add_argument("--fetch-wait-ms", type=int,
                   default=int(env("OJS_FETCH_WAIT_MS", _DEFAULTS.fetch_wait_ms)))  # fmt: skip
    s.add_argument("--visibility-timeout-ms", type=int, default=int(
        env("OJS_VISIBILITY_TIMEOUT_MS", _DEFAULTS.default_visibility_timeout_ms)))  # fmt: skip
    s.add_argument("--connect-attempts", type=int,
                   default=int(env("OJS_CONNECT_ATTEMPTS", _DEFAULTS.connect_attempts)))  # fmt: skip
    s.add_argument("--log-level", default=env("OJS_LOG_LEVEL", _DEFAULTS.log_level))
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings_from(args)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        asyncio.run(serve(settings))
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
