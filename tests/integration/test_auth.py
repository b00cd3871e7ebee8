"""Bearer tokens against a real daemon: 401 without, 403 with the wrong scope."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon import Daemon

ADMIN, PRODUCER, WORKER = "a" * 24, "p" * 24, "w" * 24


def _call(
    daemon: Daemon, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    req = urllib.request.Request(
        daemon.url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_scoped_tokens_guard_the_api(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin:{ADMIN}\nproducer:{PRODUCER}\nworker:{WORKER}\n")
    daemon = make_daemon("--auth-tokens-file", str(tokens), test_mode=False)
    push = {"type": "a.job", "args": []}

    # Unauthenticated: 401 with an OJS error; health stays open for probes
    status, body = _call(daemon, "POST", "/ojs/v1/jobs", None, push)
    assert status == 401 and body["error"]["code"] == "unauthenticated"
    assert _call(daemon, "POST", "/ojs/v1/jobs", "x" * 24, push)[0] == 401
    assert _call(daemon, "GET", "/ojs/v1/health", None)[0] == 200

    # Right scope: accepted; wrong scope: 403
    status, body = _call(daemon, "POST", "/ojs/v1/jobs", PRODUCER, push)
    assert status == 201
    status, err = _call(daemon, "POST", "/ojs/v1/jobs", WORKER, push)
    assert status == 403 and err["error"]["code"] == "forbidden"
    status, fetched = _call(
        daemon, "POST", "/ojs/v1/workers/fetch", WORKER, {"queues": ["default"]}
    )
    assert status == 200 and fetched["jobs"][0]["id"] == body["job"]["id"]
    assert (
        _call(daemon, "POST", "/ojs/v1/workers/fetch", PRODUCER, {"queues": ["default"]})[0] == 403
    )
    assert _call(daemon, "GET", "/ojs/v1/dead-letter", WORKER)[0] == 403
    assert _call(daemon, "GET", "/ojs/v1/dead-letter", ADMIN)[0] == 200


def test_secrets_never_reach_the_log(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin:{ADMIN}\n")
    daemon = make_daemon(
        "--auth-tokens-file", str(tokens), "--log-level", "DEBUG", test_mode=False
    )  # fmt: skip
    rejected = "bad-" + "x" * 20
    assert _call(daemon, "POST", "/ojs/v1/jobs", ADMIN, {"type": "a.job", "args": []})[0] == 201
    assert _call(daemon, "POST", "/ojs/v1/jobs", rejected, {"type": "a.job", "args": []})[0] == 401
    daemon.stop()
    assert daemon.log_path is not None
    log = daemon.log_path.read_text()
    assert "listening on" in log
    assert ADMIN not in log and "guest:guest" not in log
    assert rejected not in log, "a rejected token was logged"
