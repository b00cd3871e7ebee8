"""TLS settings: contexts built from files, and mistakes refused with the flag's name."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiormq
import pytest

from ojs_amqp.tls import (
    TlsConfigError,
    broker_context,
    is_permanent_tls_failure,
    server_context,
    ssl_cause,
)
from tests.tls_certs import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_plain_amqp_needs_no_context_and_refuses_tls_files(certs: Certs) -> None:
    assert broker_context("amqp://u:p@h/") is None
    with pytest.raises(TlsConfigError, match="need an amqps:// broker URL"):
        broker_context("amqp://u:p@h/", ca_file=str(certs.ca))


def test_amqps_verifies_the_broker_and_presents_the_client_certificate(certs: Certs) -> None:
    context = broker_context(
        "amqps://u:p@localhost/", str(certs.ca), str(certs.client_cert), str(certs.client_key)
    )
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    # without a CA file the system's CAs are used; verification stays on
    system = broker_context("amqps://u:p@localhost/")
    assert system is not None and system.verify_mode is ssl.CERT_REQUIRED


def test_unusable_tls_files_are_named_in_the_error(certs: Certs, tmp_path: Path) -> None:
    url = "amqps://u:p@localhost/"
    with pytest.raises(TlsConfigError, match="--amqp-ca"):
        broker_context(url, ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(TlsConfigError, match="--amqp-cert"):
        broker_context(url, cert_file=str(certs.client_cert), key_file=str(certs.server_key))
    with pytest.raises(TlsConfigError, match="--amqp-key needs --amqp-cert"):
        broker_context(url, key_file=str(certs.client_key))
    with pytest.raises(TlsConfigError, match="both --tls-cert and --tls-key"):
        server_context(cert_file=str(certs.server_cert))
    with pytest.raises(TlsConfigError, match="--tls-cert"):
        server_context(str(certs.server_cert), str(certs.client_key))


def test_https_context_only_when_configured(certs: Certs) -> None:
    assert server_context() is None
    assert isinstance(server_context(str(certs.server_cert), str(certs.server_key)), ssl.SSLContext)


def test_certificate_verdicts_are_permanent_other_connection_errors_are_not() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    try:
        raise aiormq.exceptions.AMQPConnectionError(*verify.args) from verify
    except aiormq.exceptions.AMQPConnectionError as wrapped:
        assert ssl_cause(wrapped) is verify
        assert is_permanent_tls_failure(wrapped)
    alert = ssl.SSLError(1, "tlsv13 alert certificate required")
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert is_permanent_tls_failure(alert)
    assert not is_permanent_tls_failure(ConnectionRefusedError(111, "Connection refused"))
    assert not is_permanent_tls_failure(ssl.SSLEOFError(8, "EOF occurred in violation"))
