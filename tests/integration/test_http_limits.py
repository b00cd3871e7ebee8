"""What one client can hold of the daemon: a request trickled in too slowly gets 408, and a
connection over the cap gets 503; both as OJS errors, and the daemon keeps serving."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.daemon import Daemon, request, shared_daemon

pytestmark = pytest.mark.integration

MAX_CONNECTIONS = 4
REQUEST_TIMEOUT_MS = 400


@pytest.fixture(scope="module")
def limited(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("limits")
    with shared_daemon(
        tmp, f"lim{uuid.uuid4().hex[:10]}",
        "--http-max-connections", str(MAX_CONNECTIONS),
        "--http-request-timeout-ms", str(REQUEST_TIMEOUT_MS),
    ) as daemon:  # fmt: skip
        yield daemon


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without an answer after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(body)


def _connect(daemon: Daemon) -> socket.socket:
    return socket.create_connection(("127.0.0.1", daemon.port), timeout=10)


def test_a_request_that_arrives_too_slowly_gets_an_ojs_408(limited: Daemon) -> None:
    with _connect(limited) as sock:
        sock.sendall(b"POST /ojs/v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n")
        began = time.monotonic()
        for _ in range(20):  # a header line now and then: the connection is never idle
            time.sleep(0.05)
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        status, headers, body = _read_answer(sock)
        waited = time.monotonic() - began
    assert status == 408 and headers["content-type"] == "application/openjobspec+json"
    assert body["error"]["code"] == "timeout" and body["error"]["retryable"] is True
    assert REQUEST_TIMEOUT_MS / 1000 <= waited < 5


def test_connections_over_the_cap_get_an_ojs_503_and_room_comes_back(limited: Daemon) -> None:
    held = [_connect(limited) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.1)  # the daemon has accepted all of them
        with _connect(limited) as extra:
            status, headers, body = _read_answer(extra)
        assert status == 503 and headers["retry-after"] == "2"
        assert body["error"]["code"] == "backend_error"
        assert "too many open connections" in body["error"]["message"]
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the closes reach the daemon, then it serves again
        status, answer = request("GET", f"{limited.url}/ojs/v1/health")
        if status != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200 and answer["status"] == "ok"
