"""Bearer-token authentication with four scopes, for when the API leaves the loopback.

    producer    push, cancel, activate, read jobs
    worker      fetch, ack, nack, heartbeat, read jobs
    admin       everything, including the admin API, dead letters, cron changes, directives
                and reset (ojs-admin-api's ojs:admin:read + write + purge)
    admin-read  every GET, the admin API's included, and nothing that changes anything
                (ojs:admin:read): dashboards and on-call read-only access

Health, manifest and metrics stay open (probes and Prometheus), and so do the static files
of an admin UI under /ojs/admin/ (no data: the API calls they make are authorized). Tokens
are compared in constant time; they are never logged.
"""

from __future__ import annotations

import hmac

from ojs_amqp.errors import Forbidden, Unauthenticated
from ojs_amqp.settings import Token

SCOPES = ("producer", "worker", "admin", "admin-read")
#: Served by --admin-ui-dir: static files only.
PUBLIC_PREFIX = "/ojs/admin/"
PUBLIC_PATHS = frozenset({"/ojs/manifest", "/ojs/v1/health", "/metrics", "/health", "/ready"})


def parse_tokens(spec: str) -> tuple[Token, ...]:
    """`scope:token` pairs separated by commas or new lines (blank lines and # comments ok)."""
    tokens = []
    for raw in spec.replace(",", "\n").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        scope, sep, secret = line.partition(":")
        scope, secret = scope.strip(), secret.strip()
        if not sep or scope not in SCOPES or len(secret) < 16:
            raise ValueError(
                "each token must be 'scope:secret' with scope one of "
                f"{', '.join(SCOPES)} and a secret of at least 16 characters"
            )
        tokens.append(Token(scope, secret))
    return tuple(tokens)


def required_scopes(method: str, path: str) -> frozenset[str]:
    """Scopes that may call (method, path); admin may call everything, admin-read every GET."""
    allowed = _writers(method, path)
    return allowed | {"admin-read"} if method in ("GET", "HEAD") else allowed


def _writers(method: str, path: str) -> frozenset[str]:
    base = "/ojs/v1"
    if path.startswith(f"{base}/workers/") and not path.endswith("/directive"):
        return frozenset({"worker", "admin"})
    if path.startswith(f"{base}/jobs"):
        if method == "GET" or path.endswith("/progress"):  # workers report progress
            return frozenset({"producer", "worker", "admin"})
        return frozenset({"producer", "admin"})
    if method == "GET" and path.startswith((f"{base}/queues", f"{base}/events", f"{base}/cron")):
        return frozenset({"producer", "worker", "admin"})
    return frozenset({"admin"})


def scope_of(tokens: tuple[Token, ...], presented: str) -> str | None:
    found = None
    for token in tokens:  # no early exit: the time taken does not depend on which matched
        if hmac.compare_digest(token.secret.encode(), presented.encode()):
            found = token.scope
    return found


def authorize(tokens: tuple[Token, ...], method: str, path: str, header: str) -> None:
    """Raise Unauthenticated / Forbidden unless the Authorization header's token may call
    (method, path)."""
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX) or path == PUBLIC_PREFIX[:-1]:
        return
    kind, _, presented = header.partition(" ")
    if kind.lower() != "bearer" or not presented.strip():
        raise Unauthenticated("this endpoint needs 'Authorization: Bearer <token>'")
    scope = scope_of(tokens, presented.strip())
    if scope is None:
        raise Unauthenticated("the bearer token is not valid")
    allowed = required_scopes(method, path)
    if scope not in allowed:
        raise Forbidden(
            f"a {scope} token cannot {method} {path}; needs one of: {', '.join(sorted(allowed))}"
        )
