"""TLS contexts for the broker connection (amqps://) and the HTTP API (HTTPS).

Built once at start from file paths in Settings, so a missing or unreadable file stops the
daemon with a message naming the flag, instead of failing later inside a reconnect loop.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit


class TlsConfigError(ValueError):
    """A TLS setting is inconsistent or names a file that cannot be loaded."""


def broker_context(
    amqp_url: str, ca_file: str = "", cert_file: str = "", key_file: str = ""
) -> ssl.SSLContext | None:
    """The client context for an amqps:// URL, or None for amqp:// (plain TCP).

    The broker's certificate is always verified (against `ca_file`, else the system's CAs)
    and its host name checked. A client certificate is presented when `cert_file` is given.
    """
    scheme = urlsplit(amqp_url).scheme
    if scheme != "amqps":
        if ca_file or cert_file or key_file:
            raise TlsConfigError(
                "--amqp-ca/--amqp-cert/--amqp-key need an amqps:// broker URL, "
                f"got a {scheme}:// one"
            )
        return None
    if key_file and not cert_file:
        raise TlsConfigError("--amqp-key needs --amqp-cert")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    except OSError as exc:
        raise TlsConfigError(f"cannot load --amqp-ca {ca_file!r}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file or None)
        except OSError as exc:
            raise TlsConfigError(
                f"cannot load the client certificate --amqp-cert {cert_file!r} / "
                f"--amqp-key {key_file!r}: {exc}"
            ) from None
    return context


def server_context(cert_file: str = "", key_file: str = "") -> ssl.SSLContext | None:
    """The HTTPS context for the API, or None when no certificate is configured."""
    if not cert_file and not key_file:
        return None
    if not cert_file or not key_file:
        raise TlsConfigError("HTTPS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except OSError as exc:
        raise TlsConfigError(
            f"cannot load --tls-cert {cert_file!r} / --tls-key {key_file!r}: {exc}"
        ) from None
    return context


def ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a connection error, if any (aiormq wraps it in its own type)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_permanent_tls_failure(exc: BaseException) -> bool:
    """A TLS verdict no retry can change: our side refused the broker's certificate, or the
    broker sent an alert refusing ours (or its absence)."""
    cause = ssl_cause(exc)
    if cause is None:
        return False
    if isinstance(cause, ssl.SSLCertVerificationError):
        return True
    return "ALERT" in str(getattr(cause, "reason", None) or "").upper()
