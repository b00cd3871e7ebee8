"""`ojs-amqp` command line: flags, each with an OJS_* environment variable as its default."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from ojs_amqp import admin
from ojs_amqp.amqp.failures import CONNECTION_ERRORS
from ojs_amqp.core.durations import parse_duration_ms
from ojs_amqp.errors import describe
from ojs_amqp.http.auth import parse_tokens
from ojs_amqp.logs import configure, redact
from ojs_amqp.runtime import serve
from ojs_amqp.settings import Settings, Token
from ojs_amqp.store import StoreConfigError, StoreUnavailable
from ojs_amqp.tls import TlsConfigError, ssl_cause

_DEFAULTS = Settings()
RESPONSE_MEDIA_TYPES = ("application/openjobspec+json", "application/json")


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


#: (flag, environment variable, default, type, help)
_OPTIONS: tuple[tuple[str, str, object, type, str], ...] = (
    ("--amqp-url", "OJS_AMQP_URL", _DEFAULTS.amqp_url, str, "RabbitMQ URL"),
    ("--http", "OJS_HTTP", _DEFAULTS.http_address, str, "HOST:PORT to listen on"),
    ("--store", "OJS_STORE", _DEFAULTS.store_path, str, 
     "job store: a SQLite file (path, sqlite:///path) or postgresql://user@host/db"),
    ("--prefix", "OJS_PREFIX", _DEFAULTS.prefix, str, "prefix for every RabbitMQ name"),
    ("--prefetch", "OJS_PREFETCH", _DEFAULTS.prefetch, int,
     "unacked deliveries per job queue (buffered + leased)"),
    ("--fetch-wait-ms", "OJS_FETCH_WAIT_MS", _DEFAULTS.fetch_wait_ms, int,
     "how long an empty FETCH waits for a job"),
    ("--gateway-idle-ms", "OJS_GATEWAY_IDLE_MS", _DEFAULTS.gateway_idle_ms, int,
     "stop consuming a job queue for HTTP workers this long after its last FETCH"),
    ("--delivery-hold-ms", "OJS_DELIVERY_HOLD_MS", _DEFAULTS.delivery_hold_ms, int,
     "longest a job-queue delivery stays unacked; below the broker's consumer_timeout"),
    ("--visibility-timeout-ms", "OJS_VISIBILITY_TIMEOUT_MS",
     _DEFAULTS.default_visibility_timeout_ms, int, "lease length when a job sets none"),
    ("--http-request-timeout-ms", "OJS_HTTP_REQUEST_TIMEOUT_MS",
     _DEFAULTS.http_request_timeout_ms, int,
     "a request must arrive whole within this long of its first byte (else 408)"),
    ("--http-max-connections", "OJS_HTTP_MAX_CONNECTIONS", _DEFAULTS.http_max_connections, int,
     "most HTTP connections open at once; more are answered 503 and closed"),
    ("--shutdown-delay-ms", "OJS_SHUTDOWN_DELAY_MS", _DEFAULTS.shutdown_delay_ms, int,
     "on SIGTERM, answer /ready with 503 this long before stopping (drain for load balancers)"),
    ("--retention-completed", "OJS_RETENTION_COMPLETED", "P7D", str,
     "keep completed and cancelled jobs this long (ISO 8601 duration or milliseconds)"),
    ("--retention-discarded", "OJS_RETENTION_DISCARDED", "P30D", str,
     "keep discarded jobs (not dead letters) this long"),
    ("--dead-letter-max-age", "OJS_DEAD_LETTER_MAX_AGE", "P180D", str,
     "keep dead letters at most this long"),
    ("--dead-letter-max-per-queue", "OJS_DEAD_LETTER_MAX_PER_QUEUE",
     _DEFAULTS.dead_letter_max_per_queue, int, "keep at most the newest N dead letters a queue"),
    ("--connect-attempts", "OJS_CONNECT_ATTEMPTS", _DEFAULTS.connect_attempts, int,
     "broker connection attempts at start before giving up"),
    ("--amqp-connect-timeout-ms", "OJS_AMQP_CONNECT_TIMEOUT_MS",
     _DEFAULTS.amqp_connect_timeout_ms, int,
     "longest wait for a broker connection: TCP (TLS) and the AMQP handshake"),
    ("--amqp-channel-timeout-ms", "OJS_AMQP_CHANNEL_TIMEOUT_MS",
     _DEFAULTS.amqp_channel_timeout_ms, int, "longest wait for the broker to open a channel"),
    ("--amqp-declare-timeout-ms", "OJS_AMQP_DECLARE_TIMEOUT_MS",
     _DEFAULTS.amqp_declare_timeout_ms, int,
     "longest wait for the broker to declare a queue (and bind it) or an exchange"),
    ("--amqp-confirm-timeout-ms", "OJS_AMQP_CONFIRM_TIMEOUT_MS",
     _DEFAULTS.amqp_confirm_timeout_ms, int,
     "longest wait for the broker to confirm a publish (a push then answers 503)"),
    ("--amqp-rpc-timeout-ms", "OJS_AMQP_RPC_TIMEOUT_MS", _DEFAULTS.amqp_rpc_timeout_ms, int,
     "longest wait for any other broker request (consume, qos, purge, ping, close)"),
    ("--log-level", "OJS_LOG_LEVEL", _DEFAULTS.log_level, str,
     "DEBUG (one line per job state change), INFO, WARNING, ERROR"),
    ("--log-format", "OJS_LOG_FORMAT", _DEFAULTS.log_format, str, "text or json"),
    ("--amqp-ca", "OJS_AMQP_CA", _DEFAULTS.amqp_ca_file, str,
     "CA file that signed the broker's certificate (amqps:// URLs; default: system CAs)"),
    ("--amqp-cert", "OJS_AMQP_CERT", _DEFAULTS.amqp_cert_file, str,
     "client certificate (PEM) presented to the broker over amqps://"),
    ("--amqp-key", "OJS_AMQP_KEY", _DEFAULTS.amqp_key_file, str,
     "private key (PEM) of --amqp-cert, if not in the same file"),
    ("--tls-cert", "OJS_TLS_CERT", _DEFAULTS.tls_cert_file, str,
     "certificate chain (PEM) to serve the HTTP API over HTTPS"),
    ("--tls-key", "OJS_TLS_KEY", _DEFAULTS.tls_key_file, str, "private key (PEM) of --tls-cert"),
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
        "--max-depth",
        default=os.environ.get("OJS_MAX_DEPTH", ""),
        help="backpressure: most open jobs per queue before pushes get 429 queue_full; "
        "'1000' for every queue, or '1000,email=50' with per-queue bounds (env OJS_MAX_DEPTH)",
    )
    serve_cmd.add_argument(
        "--response-media-type",
        choices=RESPONSE_MEDIA_TYPES,
        default=os.environ.get("OJS_RESPONSE_MEDIA_TYPE", _DEFAULTS.response_media_type),
        help="Content-Type of JSON answers; application/json only for clients that parse "
        "nothing else, such as the official Python SDK (env OJS_RESPONSE_MEDIA_TYPE, "
        f"default {_DEFAULTS.response_media_type!r})",
    )
    serve_cmd.add_argument(
        "--events-exchange",
        action="store_true",
        default=_env_bool("OJS_EVENTS_EXCHANGE"),
        help="publish every OJS event to the topic exchange ojs.exchange.events, routing key "
        "'{event type}.{queue}' (env OJS_EVENTS_EXCHANGE=1)",
    )
    serve_cmd.add_argument(
        "--auth-tokens-file",
        default=os.environ.get("OJS_AUTH_TOKENS_FILE"),
        help="file of 'scope:secret' lines (scopes producer, worker, admin) enabling bearer "
        "authentication (env OJS_AUTH_TOKENS_FILE; or the tokens themselves in OJS_AUTH_TOKENS)",
    )
    serve_cmd.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=_env_bool("OJS_ALLOW_UNAUTHENTICATED"),
        help="listen on a non-loopback address without authentication (not recommended)",
    )
    serve_cmd.add_argument(
        "--test-mode",
        action="store_true",
        default=_env_bool("OJS_TEST_MODE"),
        help="DANGEROUS: enables POST /ojs/v1/admin/reset, which deletes every job "
        "(env OJS_TEST_MODE=1)",
    )
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
    for flag, env_name, default, kind, text in _OPTIONS:
        if flag in ("--amqp-url", "--prefix"):  # unset: a Worker's own setting stands
            cmd.add_argument(
                flag, type=kind, default=os.environ.get(env_name),
                help=f"{text} (env {env_name}, default: the Worker's, else {default!r})",
            )  # fmt: skip
        elif flag in ("--log-level", "--log-format"):
            cmd.add_argument(
                flag, type=kind, default=kind(os.environ.get(env_name, default)),
                help=f"{text} (env {env_name}, default {default!r})",
            )  # fmt: skip


def settings_from(args: argparse.Namespace) -> Settings:
    host, _, port = args.http.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"ojs-amqp: --http must be HOST:PORT, got {args.http!r}")
    tokens = _tokens(args)
    if args.delivery_hold_ms < 1000:
        raise SystemExit("ojs-amqp: --delivery-hold-ms must be at least 1000")
    if args.dead_letter_max_per_queue < 1:
        raise SystemExit("ojs-amqp: --dead-letter-max-per-queue must be at least 1")
    if args.http_request_timeout_ms < 100 or args.http_max_connections < 1:
        raise SystemExit(
            "ojs-amqp: --http-request-timeout-ms must be at least 100 and "
            "--http-max-connections at least 1"
        )
    if args.shutdown_delay_ms < 0:
        raise SystemExit("ojs-amqp: --shutdown-delay-ms must be 0 or more")
    _check_broker_timeouts(args)
    if args.response_media_type not in RESPONSE_MEDIA_TYPES:  # from the environment
        raise SystemExit(
            f"ojs-amqp: --response-media-type must be one of {', '.join(RESPONSE_MEDIA_TYPES)}, "
            f"got {args.response_media_type!r}"
        )
    if args.log_format not in ("text", "json"):
        raise SystemExit(f"ojs-amqp: --log-format must be text or json, got {args.log_format!r}")
    return Settings(
        amqp_url=args.amqp_url,
        http_host=host,
        http_port=int(port),
        store_path=args.store,
        prefix=args.prefix,
        test_mode=args.test_mode,
        events_exchange=args.events_exchange,
        auth_tokens=tokens,
        allow_unauthenticated=args.allow_unauthenticated,
        prefetch=args.prefetch,
        fetch_wait_ms=args.fetch_wait_ms,
        gateway_idle_ms=args.gateway_idle_ms,
        delivery_hold_ms=args.delivery_hold_ms,
        max_depth=parse_max_depth(args.max_depth),
        default_visibility_timeout_ms=args.visibility_timeout_ms,
        retention_completed_ms=parse_retention_ms(
            "--retention-completed", args.retention_completed
        ),
        retention_discarded_ms=parse_retention_ms(
            "--retention-discarded", args.retention_discarded
        ),
        dead_letter_max_age_ms=parse_retention_ms(
            "--dead-letter-max-age", args.dead_letter_max_age
        ),
        dead_letter_max_per_queue=args.dead_letter_max_per_queue,
        http_request_timeout_ms=args.http_request_timeout_ms,
        http_max_connections=args.http_max_connections,
        shutdown_delay_ms=args.shutdown_delay_ms,
        connect_attempts=args.connect_attempts,
        amqp_connect_timeout_ms=args.amqp_connect_timeout_ms,
        amqp_channel_timeout_ms=args.amqp_channel_timeout_ms,
        amqp_declare_timeout_ms=args.amqp_declare_timeout_ms,
        amqp_confirm_timeout_ms=args.amqp_confirm_timeout_ms,
        amqp_rpc_timeout_ms=args.amqp_rpc_timeout_ms,
        response_media_type=args.response_media_type,
        log_level=args.log_level,
        log_format=args.log_format,
        amqp_ca_file=args.amqp_ca,
        amqp_cert_file=args.amqp_cert,
        amqp_key_file=args.amqp_key,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
    )


def _check_broker_timeouts(args: argparse.Namespace) -> None:
    """Each broker wait at least 100 ms (the runtime warns about one a push could make that
    is not below the request timeout)."""
    waits = {
        "--amqp-connect-timeout-ms": args.amqp_connect_timeout_ms,
        "--amqp-channel-timeout-ms": args.amqp_channel_timeout_ms,
        "--amqp-declare-timeout-ms": args.amqp_declare_timeout_ms,
        "--amqp-confirm-timeout-ms": args.amqp_confirm_timeout_ms,
        "--amqp-rpc-timeout-ms": args.amqp_rpc_timeout_ms,
    }
    for flag, ms in waits.items():
        if ms < 100:
            raise SystemExit(f"ojs-amqp: {flag} must be at least 100, got {ms}")


def parse_retention_ms(flag: str, text: str) -> int:
    """'P7D', 'PT12H', '90m' or plain milliseconds; at least one second."""
    try:
        ms = int(text) if text.strip().isdigit() else parse_duration_ms(text)
    except ValueError:
        raise SystemExit(
            f"ojs-amqp: {flag} wants an ISO 8601 duration (P7D, PT12H) or milliseconds, "
            f"got {text!r}"
        ) from None
    if ms < 1000:
        raise SystemExit(f"ojs-amqp: {flag} must be at least one second, got {text!r}")
    return ms


def parse_max_depth(spec: str) -> tuple[tuple[str, int], ...]:
    """'1000,email=50' -> (("*", 1000), ("email", 50))."""
    bounds: list[tuple[str, int]] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        queue, _, number = part.rpartition("=")
        if not number.isdigit():
            raise SystemExit(f"ojs-amqp: --max-depth wants N or QUEUE=N items, got {part!r}")
        bounds.append((queue or "*", int(number)))
    return tuple(bounds)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed: it halves the event loop's share of the CPU."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _tokens(args: argparse.Namespace) -> tuple[Token, ...]:
    """Tokens come from a file or the environment, never from a flag (flags show in `ps`)."""
    spec = os.environ.get("OJS_AUTH_TOKENS", "")
    if args.auth_tokens_file:
        try:
            with open(args.auth_tokens_file, encoding="utf-8") as handle:
                spec = handle.read()
        except OSError as exc:
            raise SystemExit(f"ojs-amqp: cannot read --auth-tokens-file: {exc}") from None
    try:
        return parse_tokens(spec)
    except ValueError as exc:
        raise SystemExit(f"ojs-amqp: bad auth tokens: {exc}") from None


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
    except (TlsConfigError, StoreConfigError, StoreUnavailable) as exc:
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
