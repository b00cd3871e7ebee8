"""Real jobs for the browser tests, made through the daemon's HTTP API as a producer and an
HTTP worker would."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import api


class Jobs:
    def __init__(self, origin: str, token: str | None = None) -> None:
        self.base = f"{origin}/ojs/v1"
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = api(method, self.base + path, body, self.token)
        assert status < 300, f"{method} {path}: {status} {answer}"
        return answer

    def push(
        self, type_: str, args: list[Any], queue: str, meta: Any = None, **options: Any
    ) -> dict[str, Any]:
        body = {"type": type_, "args": args, "options": {"queue": queue, **options}}
        if meta is not None:
            body["meta"] = meta
        return dict(self.call("POST", "/jobs", body)["job"])

    def get(self, job_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/jobs/{job_id}")["job"])

    def fetch(self, queue: str, worker: str = "browser-test-worker") -> dict[str, Any]:
        """One job of `queue`, leased to `worker` (the queue must hold one)."""
        for _ in range(20):
            body = {"queues": [queue], "count": 1, "worker_id": worker}
            found = self.call("POST", "/workers/fetch", body)["jobs"]
            if found:
                return dict(found[0])
        raise AssertionError(f"no job to fetch from {queue}")

    def ack(self, job_id: str, result: Any = None, worker: str = "browser-test-worker") -> None:
        self.call("POST", "/workers/ack", {"job_id": job_id, "result": result, "worker_id": worker})

    def fail(self, job_id: str, message: str, worker: str = "browser-test-worker") -> None:
        error = {"code": "handler_error", "message": message, "retryable": False}
        self.call("POST", "/workers/nack", {"job_id": job_id, "error": error, "worker_id": worker})

    def progress(self, job_id: str, value: float, message: str) -> None:
        self.call("PUT", f"/jobs/{job_id}/progress", {"progress": value, "message": message})

    def complete(self, queue: str, type_: str, args: list[Any], result: Any) -> dict[str, Any]:
        job = self.push(type_, args, queue)
        fetched = self.fetch(queue)
        assert fetched["id"] == job["id"]
        self.ack(job["id"], result)
        return job

    def dead_letter(self, queue: str, type_: str, args: list[Any], message: str) -> dict[str, Any]:
        """A job that failed its only attempt: a dead letter."""
        policy = {"max_attempts": 1, "on_exhaustion": "dead_letter"}
        job = self.push(type_, args, queue, retry=policy)
        fetched = self.fetch(queue)
        assert fetched["id"] == job["id"]
        self.fail(job["id"], message)
        assert self.get(job["id"])["state"] == "discarded"
        return job
