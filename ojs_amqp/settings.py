"""One typed settings object, built once by the CLI and passed explicitly to everything."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Token:
    """An API bearer token and its scope (producer, worker or admin)."""

    scope: str
    secret: str

    def __repr__(self) -> str:  # never print the secret
        return f"Token(scope={self.scope!r}, secret=***)"


@dataclass(frozen=True, slots=True)
class Settings:
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    store_path: str = "ojs-amqp.db"
    #: Topology name prefix for multi-tenancy and test isolation ("" = the spec's names).
    prefix: str = ""
    #: Enables POST /ojs/v1/admin/reset (wipes everything) and the conformance suite's
    #: heartbeat test hook. Dangerous: never in production.
    test_mode: bool = False
    #: Unacked deliveries per job queue: buffered jobs plus jobs leased to HTTP workers.
    prefetch: int = 1000
    #: The daemon consumes a job queue for HTTP workers only from the first FETCH on, and
    #: stops this long after the last one, leaving the queue to native AMQP workers.
    gateway_idle_ms: int = 30_000
    #: The longest the daemon keeps a delivery of a job queue unacked: buffered jobs older
    #: than this are renewed (a fresh copy through their queue), and a lease held longer
    #: moves to a timer on the delay ladder, so the broker's `consumer_timeout` (30 min on
    #: RabbitMQ 3.10) never closes a gateway channel. Keep it below that timeout.
    delivery_hold_ms: int = 600_000
    #: How long an empty FETCH waits for a job before answering `{"jobs": []}`.
    fetch_wait_ms: int = 1000
    #: Lease length when neither the job nor the fetch sets one. The HTTP binding's example
    #: is 30 s, the worker protocol says 1800 s; the conformance suite's cron-overlap test
    #: holds a job 65 s without heartbeats and expects it still leased, hence 5 minutes.
    default_visibility_timeout_ms: int = 300_000
    #: Execution timeout when a job sets none (the spec's SHOULD is 1800 s).
    default_timeout_ms: int = 1_800_000
    #: Finished jobs are deleted from the store this long after they finished: completed and
    #: cancelled ones, and discarded ones that are not dead letters.
    retention_completed_ms: int = 7 * 86_400_000
    retention_discarded_ms: int = 30 * 86_400_000
    #: Dead letters are kept until retried or deleted, at most this long and at most this
    #: many per queue (the dead-letter extension's MUST: P180D, 10,000).
    dead_letter_max_age_ms: int = 180 * 86_400_000
    dead_letter_max_per_queue: int = 10_000
    #: Publish every OJS event to the topic exchange ojs.exchange.events (one extra,
    #: unconfirmed publish per event; off by default for throughput).
    events_exchange: bool = False
    connect_attempts: int = 5
    #: Every broker wait is bounded (amqp/bounded.py): the TCP + AMQP handshake of each
    #: connection, Channel.Open, a declare (queue + binding), a publish confirm, and any
    #: other request. Past its bound a wait fails (a push answers 503), health reports
    #: `degraded` with the reason, and a connection that no longer answers at all is
    #: dropped and reconnected. Each must stay below http_request_timeout_ms.
    amqp_connect_timeout_ms: int = 10_000
    amqp_channel_timeout_ms: int = 5_000
    amqp_declare_timeout_ms: int = 10_000
    amqp_confirm_timeout_ms: int = 10_000
    amqp_rpc_timeout_ms: int = 10_000
    max_body_bytes: int = 10 * 1024 * 1024
    #: Content-Type of JSON answers: the spec's application/openjobspec+json, or
    #: application/json for clients that parse nothing else (the official Python SDK).
    response_media_type: str = "application/openjobspec+json"
    #: A request must arrive whole within this long of its first byte (else 408), and at
    #: most this many HTTP connections are open at once (more are answered 503 and closed):
    #: clients that trickle requests or hoard sockets cannot starve the daemon of either.
    http_request_timeout_ms: int = 30_000
    http_max_connections: int = 4096
    #: On SIGTERM, /ready answers 503 for this long before the daemon stops serving, so
    #: load balancers and Kubernetes take it out of rotation first (0: stop at once).
    shutdown_delay_ms: int = 0
    #: Bearer tokens (scope + secret); empty = no authentication (loopback only, unless
    #: allow_unauthenticated).
    auth_tokens: tuple[Token, ...] = ()
    allow_unauthenticated: bool = False
    log_level: str = "INFO"
    log_format: str = "text"
    #: TLS to the broker (amqps:// URLs): CA bundle that signed the broker's certificate
    #: (empty = the system's CAs), and the client certificate and key the broker may demand.
    amqp_ca_file: str = ""
    amqp_cert_file: str = ""
    amqp_key_file: str = ""
    #: HTTPS for the API: certificate chain and private key (both empty = plain HTTP).
    tls_cert_file: str = ""
    tls_key_file: str = ""

    #: Backpressure: the most open (non-terminal) jobs a queue may hold before pushes are
    #: answered 429 queue_full. "*" is every queue's default; 0 or absent = unbounded.
    max_depth: tuple[tuple[str, int], ...] = ()
    #: A directory of static files (a built admin UI) served under /ojs/admin/, with the
    #: single-page-app fallback ("" = not served).
    admin_ui_dir: str = ""
    #: The web dashboard at /ojs/admin/: "auto" serves it when the API listens on loopback
    #: only, "on" on any address (behind the tokens, as the API), "off" never.
    dashboard: str = "auto"

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
