"""One typed settings object, built once (by the CLI, or in code) and passed explicitly to
everything; every value is checked when it is built, so a bad one fails at start, naming it.

Each field is one `setting(default, SECTION, help, flag=..., env=..., rule...)`
(settings_schema.py): `ojs-amqp serve`'s flags and the README's configuration table are made
from these.

Adding a setting: one field at the end of `Settings` (keyword-only, so the order is free),

    my_thing_ms: int = setting(
        5000, DELIVERY, "what it does, in one line for --help",
        flag="--my-thing-ms", env="OJS_MY_THING_MS", minimum=0,
        readme="more for the README, if the line is not enough",
    )

then `python -m ojs_amqp.settings_table --write` to regenerate the README's table
(tests/unit/test_settings.py fails until it matches). The flag's value reaches the field by
itself; a field that operators should not set gets no `flag`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from ojs_amqp.settings_schema import (
    BROKER,
    DELIVERY,
    HTTP,
    LOGS,
    RETENTION,
    SECURITY,
    STORE,
    check_fields,
    check_log_level,
    check_max_depth,
    duration_ms,
    host_port,
    max_depth,
    setting,
)

RESPONSE_MEDIA_TYPES = ("application/openjobspec+json", "application/json")
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Token:
    """An API bearer token and its scope (producer, worker, admin or admin-read)."""

    scope: str
    secret: str

    def __repr__(self) -> str:  # never print the secret
        return f"Token(scope={self.scope!r}, secret=***)"


def _tokens(text: str) -> tuple[Token, ...]:
    from ojs_amqp.http.auth import parse_tokens  # here: http.auth imports Token from us

    try:
        return parse_tokens(text)
    except ValueError as exc:
        raise ValueError(f"(or OJS_AUTH_TOKENS) holds a bad token: {exc}") from None


def _check_tokens(value: tuple[Any, ...]) -> str | None:
    if all(isinstance(t, Token) for t in value):
        return None
    return "must hold Token(scope, secret) items"


def _check_store(value: str) -> str | None:
    from ojs_amqp.store import StoreConfigError, check_location

    try:
        check_location(value)
    except StoreConfigError as exc:
        return str(exc)
    return None


def _broker_wait(help: str, flag: str, default: int, readme: str = "") -> Any:
    """A bound on one kind of broker wait (amqp/bounded.py): past it the wait fails (a push
    answers 503) and health reports `degraded`; each must stay below the HTTP request
    timeout."""
    env = "OJS_" + flag[2:].upper().replace("-", "_")
    return setting(default, BROKER, help, flag=flag, env=env, minimum=100, readme=readme)


def _retention(default: int, text: str, help: str, flag: str, readme: str) -> Any:
    """How long finished jobs or dead letters stay: an ISO 8601 duration or milliseconds,
    at least one second."""
    env = "OJS_" + flag[2:].upper().replace("-", "_")
    return setting(default, RETENTION, help, flag=flag, env=env, parse=duration_ms,
                   default_text=text, minimum=1000, minimum_text="one second (1000 ms)",
                   readme=readme)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    # A table of declarations, one field each, grouped by section: kept compact by hand.
    # fmt: off

    # --- Broker ------------------------------------------------------------------------------
    amqp_url: str = setting(
        "amqp://guest:guest@127.0.0.1:5672/", BROKER, "RabbitMQ URL",
        flag="--amqp-url", env="OJS_AMQP_URL", readme="broker; the password is never logged")
    #: Topology name prefix for multi-tenancy and test isolation ("" = the spec's names).
    prefix: str = setting(
        "", BROKER, "prefix for every RabbitMQ name", flag="--prefix", env="OJS_PREFIX",
        readme="prefix for every RabbitMQ name (`acme.ojs.queue.x`)")
    connect_attempts: int = setting(
        5, BROKER, "broker connection attempts at start before giving up",
        flag="--connect-attempts", env="OJS_CONNECT_ATTEMPTS", minimum=1,
        readme="broker attempts at start (1 s doubling, ±25 %)")
    amqp_connect_timeout_ms: int = _broker_wait(
        "longest wait for a broker connection: TCP (TLS) and the AMQP handshake",
        "--amqp-connect-timeout-ms", 10_000,
        "longest wait for one broker connection: TCP (TLS) and the AMQP handshake; an "
        "attempt past it fails, saying how far it got")
    amqp_channel_timeout_ms: int = _broker_wait(
        "longest wait for the broker to open a channel", "--amqp-channel-timeout-ms", 5_000)
    amqp_declare_timeout_ms: int = _broker_wait(
        "longest wait for the broker to declare a queue (and bind it) or an exchange",
        "--amqp-declare-timeout-ms", 10_000,
        "longest wait for a declare (a queue and its binding, or an exchange); a push to a "
        "new queue then answers 503")
    amqp_confirm_timeout_ms: int = _broker_wait(
        "longest wait for the broker to confirm a publish (a push then answers 503)",
        "--amqp-confirm-timeout-ms", 10_000,
        "longest wait for the broker's confirm of a publish; a push then answers 503 "
        "`backend_error` with `Retry-After`")
    amqp_rpc_timeout_ms: int = _broker_wait(
        "longest wait for any other broker request (consume, qos, purge, ping, close)",
        "--amqp-rpc-timeout-ms", 10_000,
        "longest wait for any other broker request (consume, qos, purge, the health ping, "
        "closing). Past any of these timeouts health answers 503 `degraded` with the reason, "
        "and a connection that no longer answers at all is dropped and reconnected "
        "([docs/reliability.md](docs/reliability.md)); keep the channel, declare and confirm "
        "timeouts below `--http-request-timeout-ms`")
    #: TLS to the broker (amqps:// URLs): CA bundle that signed the broker's certificate
    #: (empty = the system's CAs), and the client certificate and key the broker may demand.
    amqp_ca_file: str = setting(
        "", BROKER,
        "CA file that signed the broker's certificate (amqps:// URLs; default: system CAs)",
        flag="--amqp-ca", env="OJS_AMQP_CA",
        readme="TLS to the broker (`amqps://` URL): CA of the broker's certificate "
        "([docs/security.md](docs/security.md#tls))")
    amqp_cert_file: str = setting(
        "", BROKER, "client certificate (PEM) presented to the broker over amqps://",
        flag="--amqp-cert", env="OJS_AMQP_CERT")
    amqp_key_file: str = setting(
        "", BROKER, "private key (PEM) of --amqp-cert, if not in the same file",
        flag="--amqp-key", env="OJS_AMQP_KEY")

    # --- HTTP API ----------------------------------------------------------------------------
    http_host: str = setting(
        "127.0.0.1", HTTP, "HOST:PORT to listen on", flag="--http", env="OJS_HTTP",
        parse=host_port, fills=("http_host", "http_port"), default_text="127.0.0.1:8080",
        readme="HTTP listen address")
    http_port: int = setting(8080, HTTP, "the port of --http", minimum=0, maximum=65535)
    max_body_bytes: int = setting(
        10 * 1024 * 1024, HTTP, "largest request body (413 payload_too_large)", minimum=1)
    #: Content-Type of JSON answers: the spec's application/openjobspec+json, or
    #: application/json for clients that parse nothing else (the official Python SDK).
    response_media_type: str = setting(
        "application/openjobspec+json", HTTP,
        "Content-Type of JSON answers; application/json only for clients that parse "
        "nothing else, such as the official Python SDK",
        flag="--response-media-type", env="OJS_RESPONSE_MEDIA_TYPE",
        choices=RESPONSE_MEDIA_TYPES,
        readme="`Content-Type` of JSON answers; `application/json` is the only other value "
        "(see below)")
    #: A request must arrive whole within this long of its first byte (else 408), and at
    #: most this many HTTP connections are open at once (more are answered 503 and closed):
    #: clients that trickle requests or hoard sockets cannot starve the daemon of either.
    http_request_timeout_ms: int = setting(
        30_000, HTTP, "a request must arrive whole within this long of its first byte (else 408)",
        flag="--http-request-timeout-ms", env="OJS_HTTP_REQUEST_TIMEOUT_MS", minimum=100,
        readme="a request must arrive whole within this long of its first byte, else 408 "
        "`timeout` (slow-loris clients)")
    http_max_connections: int = setting(
        4096, HTTP, "most HTTP connections open at once; more are answered 503 and closed",
        flag="--http-max-connections", env="OJS_HTTP_MAX_CONNECTIONS", minimum=1,
        readme="most HTTP connections open at once; more are answered 503 and closed "
        "([docs/security.md](docs/security.md))")
    #: On SIGTERM, /ready answers 503 for this long before the daemon stops serving, so
    #: load balancers and Kubernetes take it out of rotation first (0: stop at once).
    shutdown_delay_ms: int = setting(
        0, HTTP,
        "on SIGTERM, answer /ready with 503 this long before stopping (drain for load balancers)",
        flag="--shutdown-delay-ms", env="OJS_SHUTDOWN_DELAY_MS", minimum=0,
        readme="on SIGTERM, `/ready` answers 503 for this long before the daemon stops "
        "serving, so a load balancer or Kubernetes takes it out of rotation first "
        '(docs/observability.md, "Health and probes")')

    # --- Security ----------------------------------------------------------------------------
    #: Bearer tokens (scope + secret); empty = no authentication (loopback only, unless
    #: allow_unauthenticated).
    auth_tokens: tuple[Token, ...] = setting(
        (), SECURITY,
        "file of 'scope:secret' lines (scopes producer, worker, admin, admin-read) enabling bearer "
        "authentication",
        flag="--auth-tokens-file", env="OJS_AUTH_TOKENS_FILE", from_file=True,
        value_env="OJS_AUTH_TOKENS", parse=_tokens, check=_check_tokens,
        readme="bearer tokens `scope:secret` (producer, worker, admin, admin-read), one a "
        "line; without them the daemon only listens on loopback "
        "([docs/security.md](docs/security.md))")
    allow_unauthenticated: bool = setting(
        False, SECURITY,
        "listen on a non-loopback address without authentication (not recommended)",
        flag="--allow-unauthenticated", env="OJS_ALLOW_UNAUTHENTICATED", switch=True,
        readme="listen on a non-loopback address without tokens")
    #: HTTPS for the API: certificate chain and private key (both empty = plain HTTP).
    tls_cert_file: str = setting(
        "", SECURITY, "certificate chain (PEM) to serve the HTTP API over HTTPS",
        flag="--tls-cert", env="OJS_TLS_CERT")
    tls_key_file: str = setting(
        "", SECURITY, "private key (PEM) of --tls-cert", flag="--tls-key", env="OJS_TLS_KEY")
    #: Enables POST /ojs/v1/admin/reset (wipes everything) and the conformance suite's
    #: heartbeat test hook. Dangerous: never in production.
    test_mode: bool = setting(
        False, SECURITY, "DANGEROUS: enables POST /ojs/v1/admin/reset, which deletes every job",
        flag="--test-mode", env="OJS_TEST_MODE", switch=True,
        readme="**dangerous**: enables `POST /ojs/v1/admin/reset`, which deletes every job, "
        "deletes the RabbitMQ queues of every OJS queue and purges the fixed ones, and the "
        "conformance suite's heartbeat hook (`meta.test_directive`). Never in production.")

    # --- Store -------------------------------------------------------------------------------
    store_path: str = setting(
        "ojs-amqp.db", STORE,
        "job store: a SQLite file (path, sqlite:///path) or postgresql://user@host/db",
        flag="--store", env="OJS_STORE", check=_check_store,
        readme="the job store: a SQLite file (WAL), as a path or `sqlite:///path`, or "
        "`postgresql://user:password@host/db` with optional `connect_timeout`, "
        "`command_timeout`, `pool_size`, `statement_cache_size` parameters. One daemon per "
        "store: a second one on the same PostgreSQL store is refused "
        "([docs/scaling.md](docs/scaling.md))")

    # --- Job delivery ------------------------------------------------------------------------
    #: Unacked deliveries per job queue: buffered jobs plus jobs leased to HTTP workers.
    prefetch: int = setting(
        1000, DELIVERY, "unacked deliveries per job queue (buffered + leased)",
        flag="--prefetch", env="OJS_PREFETCH", minimum=0, maximum=65535,
        readme="unacked deliveries per job queue: buffered for FETCH plus leased to workers")
    #: How long an empty FETCH waits for a job before answering `{"jobs": []}`.
    fetch_wait_ms: int = setting(
        1000, DELIVERY, "how long an empty FETCH waits for a job",
        flag="--fetch-wait-ms", env="OJS_FETCH_WAIT_MS", minimum=0,
        readme='how long an empty FETCH waits before `{"jobs": []}`')
    #: The daemon consumes a job queue for HTTP workers only from the first FETCH on, and
    #: stops this long after the last one, leaving the queue to native AMQP workers.
    gateway_idle_ms: int = setting(
        30_000, DELIVERY,
        "stop consuming a job queue for HTTP workers this long after its last FETCH",
        flag="--gateway-idle-ms", env="OJS_GATEWAY_IDLE_MS", minimum=0,
        readme="the daemon consumes a job queue for HTTP workers from the first FETCH on, and "
        "lets go this long after the last one (native workers then have the queue to "
        "themselves)")
    #: The longest the daemon keeps a delivery of a job queue unacked: buffered jobs older
    #: than this are renewed (a fresh copy through their queue), and a lease held longer
    #: moves to a timer on the delay ladder, so the broker's `consumer_timeout` (30 min on
    #: RabbitMQ 3.10) never closes a gateway channel. Keep it below that timeout.
    delivery_hold_ms: int = setting(
        600_000, DELIVERY,
        "longest a job-queue delivery stays unacked; below the broker's consumer_timeout",
        flag="--delivery-hold-ms", env="OJS_DELIVERY_HOLD_MS", minimum=1000,
        readme="the longest the daemon keeps a job-queue delivery unacked: older buffered jobs "
        "are renewed (a fresh copy through their queue, never a requeue, which would count "
        "against a quorum queue's delivery limit), longer leases move to a timer on the delay "
        "ladder. Keep it below the broker's `consumer_timeout` (30 min on RabbitMQ 3.10), "
        "which closes a channel over a delivery held longer "
        "([docs/reliability.md](docs/reliability.md))")
    #: Lease length when neither the job nor the fetch sets one. The HTTP binding's example
    #: is 30 s, the worker protocol says 1800 s; the conformance suite's cron-overlap test
    #: holds a job 65 s without heartbeats and expects it still leased, hence 5 minutes.
    default_visibility_timeout_ms: int = setting(
        300_000, DELIVERY, "lease length when a job sets none",
        flag="--visibility-timeout-ms", env="OJS_VISIBILITY_TIMEOUT_MS", minimum=1,
        readme="lease length when neither job nor fetch sets one; workers extend it with "
        "heartbeats")
    #: Execution timeout when a job sets none (the spec's SHOULD is 1800 s).
    default_timeout_ms: int = setting(
        1_800_000, DELIVERY, "execution timeout of a job that sets none", minimum=1)
    #: Backpressure: the most open (non-terminal) jobs a queue may hold before pushes are
    #: answered 429 queue_full. "*" is every queue's default; 0 or absent = unbounded.
    max_depth: tuple[tuple[str, int], ...] = setting(
        (), DELIVERY,
        "backpressure: most open jobs per queue before pushes get 429 queue_full; "
        "'1000' for every queue, or '1000,email=50' with per-queue bounds",
        flag="--max-depth", env="OJS_MAX_DEPTH", parse=max_depth, check=check_max_depth,
        default_text="unbounded",
        readme="backpressure: `1000` or `1000,email=50`; a push to a queue holding that many "
        "open jobs gets 429 `queue_full` with `Retry-After`. A RabbitMQ `max-length` policy "
        "on `ojs.queue.*` is honoured too (the broker's refusal becomes 429)")

    # --- Retention ---------------------------------------------------------------------------
    #: Finished jobs are deleted from the store this long after they finished: completed and
    #: cancelled ones, and discarded ones that are not dead letters.
    retention_completed_ms: int = _retention(
        7 * _DAY_MS, "P7D",
        "keep completed and cancelled jobs this long (ISO 8601 duration or milliseconds)",
        "--retention-completed",
        "completed and cancelled jobs leave the store this long after they finished "
        "(ISO 8601 duration, or milliseconds)")
    retention_discarded_ms: int = _retention(
        30 * _DAY_MS, "P30D", "keep discarded jobs (not dead letters) this long",
        "--retention-discarded", "the same for discarded jobs that are not dead letters")
    #: Dead letters are kept until retried or deleted, at most this long and at most this
    #: many per queue (the dead-letter extension's MUST: P180D, 10,000).
    dead_letter_max_age_ms: int = _retention(
        180 * _DAY_MS, "P180D", "keep dead letters at most this long", "--dead-letter-max-age",
        "dead letters are kept until retried or deleted, at most this long")
    dead_letter_max_per_queue: int = setting(
        10_000, RETENTION, "keep at most the newest N dead letters a queue",
        flag="--dead-letter-max-per-queue", env="OJS_DEAD_LETTER_MAX_PER_QUEUE", minimum=1)

    # --- Logs and events ---------------------------------------------------------------------
    log_level: str = setting(
        "INFO", LOGS, "DEBUG (one line per job state change), INFO, WARNING, ERROR",
        flag="--log-level", env="OJS_LOG_LEVEL", check=check_log_level,
        readme="`DEBUG` adds one line per job state change")
    log_format: str = setting(
        "text", LOGS, "text or json", flag="--log-format", env="OJS_LOG_FORMAT",
        choices=("text", "json"), readme="`json`: one JSON object per line")
    #: Publish every OJS event to the topic exchange ojs.exchange.events (one extra,
    #: unconfirmed publish per event; off by default for throughput).
    events_exchange: bool = setting(
        False, LOGS,
        "publish every OJS event to the topic exchange ojs.exchange.events, routing key "
        "'{event type}.{queue}'",
        flag="--events-exchange", env="OJS_EVENTS_EXCHANGE", switch=True,
        readme="also publish every OJS event to the topic exchange `ojs.exchange.events` "
        "(key `{event type}.{queue}`)")

    # --- Added by later features: new settings go here (see the module's docstring) -------
    #: A directory of static files (a built admin UI) served under /ojs/admin/, with the
    #: single-page-app fallback ("" = not served).
    admin_ui_dir: str = setting(
        "", HTTP,
        "serve this directory of static files (a built admin UI, e.g. the official OJS admin "
        "UI) under /ojs/admin/ in place of the dashboard",
        flag="--admin-ui-dir", env="OJS_ADMIN_UI_DIR", default_text="not served")
    #: The web dashboard at /ojs/admin/: "auto" serves it when the API listens on loopback
    #: only, "on" on any address (behind the tokens, as the API), "off" never.
    dashboard: str = setting(
        "auto", HTTP,
        "the web dashboard at /ojs/admin/: auto (only when listening on loopback), on, off",
        flag="--dashboard", env="OJS_DASHBOARD", choices=("auto", "on", "off"),
        readme="the web dashboard at `/ojs/admin/` (docs/dashboard.md): `auto` serves it only "
        "when the API listens on loopback, `on` on any address (behind the tokens), `off` never")

    # fmt: on

    def __post_init__(self) -> None:
        check_fields(self)

    def max_depth_for(self, queue: str) -> int:
        bounds = dict(self.max_depth)
        return bounds.get(queue, bounds.get("*", 0))

    @property
    def http_address(self) -> str:
        return f"{self.http_host}:{self.http_port}"

    @property
    def http_scheme(self) -> str:
        return "https" if self.tls_cert_file else "http"

    @property
    def listens_on_loopback_only(self) -> bool:
        if self.http_host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.http_host.strip("[]")).is_loopback
        except ValueError:
            return False
