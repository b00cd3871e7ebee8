"""A tiny HTTP client for the admin API tests: status, JSON body and headers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tests.daemon import Daemon


def call(
    daemon: Daemon, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        daemon.url + path, method=method, headers=headers,
        data=None if body is None else json.dumps(body).encode(),
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status, got = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        raw, status, got = err.read(), err.code, dict(err.headers)
    try:
        return status, json.loads(raw) if raw else None, got
    except ValueError:
        return status, raw, got


def ok(daemon: Daemon, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    got, answer, _ = call(daemon, method, path, body)
    assert got == status, (method, path, got, answer)
    return answer


def push(
    daemon: Daemon, queue: str, job_type: str = "t.job", meta: Any = None, **options: Any
) -> str:
    body = {"type": job_type, "args": [queue], "options": {"queue": queue, **options}}
    if meta is not None:
        body["meta"] = meta
    return str(ok(daemon, "POST", "/ojs/v1/jobs", body, 201)["job"]["id"])


def fetch(daemon: Daemon, queue: str, worker: str = "w-1", count: int = 1) -> list[str]:
    got = ok(daemon, "POST", "/ojs/v1/workers/fetch",
             {"queues": [queue], "count": count, "worker_id": worker})  # fmt: skip
    return [j["id"] for j in got["jobs"]]


def fail(daemon: Daemon, job_id: str, code: str = "boom") -> None:
    ok(daemon, "POST", "/ojs/v1/workers/nack",
       {"job_id": job_id, "error": {"code": code, "message": "failed on purpose"}})  # fmt: skip


def complete(daemon: Daemon, job_id: str) -> None:
    ok(daemon, "POST", "/ojs/v1/workers/ack", {"job_id": job_id, "result": {"ok": True}})
