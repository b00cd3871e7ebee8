"""TLS end to end: the daemon reaches a broker that demands a client certificate over amqps://,
and serves its API over HTTPS; a wrong CA stops it at once with a message that says so.

Runs on the private RabbitMQ node (tests/rabbit_node.py), whose TLS listener has
`verify = verify_peer` and `fail_if_no_peer_cert = true`.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import Daemon, free_port, request
from tests.rabbit_node import TLS_USER, RabbitNode
from tests.tls_certs import Certs


def _certs(node: RabbitNode) -> Certs:
    assert node.certs is not None
    return node.certs


def _tls_args(certs: Certs, ca: Path | None = None) -> list[str]:
    return [
        "--amqp-ca", str(ca or certs.ca),
        "--amqp-cert", str(certs.client_cert),
        "--amqp-key", str(certs.client_key),
    ]  # fmt: skip


def _serve_until_exit(node: RabbitNode, tmp_path: Path, *args: str) -> tuple[int, str, float]:
    """Run `ojs-amqp serve` that is expected to give up; exit code, output, seconds taken."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ojs_amqp", "serve", "--amqp-url", node.amqps_url,
         "--http", f"127.0.0.1:{free_port()}", "--store", str(tmp_path / "refused.db"),
         "--prefix", "tls-refused", "--log-level", "DEBUG", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def _connection_attempts(output: str) -> int:
    """How many times the daemon tried to connect: aiormq logs each failed attempt."""
    return output.count("aiormq.connection error")


def test_daemon_uses_amqps_with_a_client_certificate_and_serves_https(
    rabbit_node: RabbitNode, make_node_daemon: Callable[..., Daemon]
) -> None:
    certs = _certs(rabbit_node)
    # Given a daemon on the broker's TLS port, with CA, client certificate and HTTPS
    daemon = make_node_daemon(
        *_tls_args(certs), "--tls-cert", str(certs.server_cert), "--tls-key",
        str(certs.server_key), "--log-level", "DEBUG", start=False, amqp=rabbit_node.amqps_url,
    )  # fmt: skip
    daemon.https = ssl.create_default_context(cafile=str(certs.ca))
    daemon.start()
    api = f"{daemon.url}/ojs/v1"
    assert api.startswith("https://")

    # When a job is pushed, fetched and acked over HTTPS
    status, body = request(
        "POST", f"{api}/jobs", {"type": "tls.job", "args": [1], "options": {"queue": "tls"}},
        context=daemon.https,
    )  # fmt: skip
    assert status == 201, body
    job_id = body["job"]["id"]
    status, body = request(
        "POST", f"{api}/workers/fetch", {"queues": ["tls"], "worker_id": "w"},
        context=daemon.https,
    )  # fmt: skip
    assert status == 200 and [j["id"] for j in body["jobs"]] == [job_id]
    status, body = request(
        "POST", f"{api}/workers/ack", {"job_id": job_id, "worker_id": "w"}, context=daemon.https
    )
    assert status == 200 and body["state"] == "completed"

    # Then both broker connections are TLS, authenticated by the client certificate
    listing = rabbit_node.ctl("list_connections", "user", "ssl", "peer_cert_subject", "name")
    ours = [line for line in listing.splitlines() if line.startswith(TLS_USER)]
    assert len(ours) == 2, listing
    assert all("\ttrue\t" in line and "CN=ojs-client" in line for line in ours), listing
    # and plain HTTP is not served on the HTTPS port
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/ojs/v1/health", timeout=5)
    # and the broker password is in no log line, even at DEBUG
    daemon.stop()
    assert daemon.log_path is not None
    log = daemon.log_path.read_text()
    assert "listening on https://127.0.0.1" in log and f"{TLS_USER}:***@localhost" in log
    assert rabbit_node.tls_password not in log


def test_a_wrong_ca_stops_the_daemon_at_once_with_a_clear_message(
    rabbit_node: RabbitNode, tmp_path: Path
) -> None:
    certs = _certs(rabbit_node)
    # Given a CA that did not sign the broker's certificate
    code, output, seconds = _serve_until_exit(
        rabbit_node, tmp_path, *_tls_args(certs, ca=certs.other_ca)
    )
    # Then the daemon exits 2 without retrying, says why, and hides the password
    assert code == 2, output
    assert "TLS handshake with the broker" in output and "certificate verify failed" in output
    assert "--amqp-ca" in output
    assert _connection_attempts(output) == 1, f"a certificate error was retried: {output}"
    assert seconds < 5, f"a certificate error was retried ({seconds:.1f}s)"
    assert rabbit_node.tls_password not in output


def test_the_broker_refuses_a_daemon_without_a_client_certificate(
    rabbit_node: RabbitNode, tmp_path: Path
) -> None:
    certs = _certs(rabbit_node)
    code, output, seconds = _serve_until_exit(rabbit_node, tmp_path, "--amqp-ca", str(certs.ca))
    assert code == 2, output
    assert "TLS handshake with the broker" in output and "certificate required" in output
    # (nothing is logged per attempt here; an error worth retrying is retried all five times,
    # which takes at least 11 s: 1+2+4+8 s less a quarter of jitter)
    assert seconds < 5, f"the broker's refusal was retried ({seconds:.1f}s)"
    assert rabbit_node.tls_password not in output


def test_tls_options_without_amqps_are_refused_before_connecting(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ojs_amqp", "serve", "--amqp-url", "amqp://u:secret-pw@h/",
         "--amqp-ca", str(tmp_path / "ca.pem"), "--store", str(tmp_path / "s.db")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "need an amqps:// broker URL" in done.stderr and "secret-pw" not in done.stderr
