"""Retention of finished jobs, configured on the command line: completed and discarded jobs
leave the store after their retention; dead letters follow their own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.daemon import Daemon, request

pytestmark = pytest.mark.integration


def _finish(daemon: Daemon, queue: str, outcome: str, **retry: Any) -> str:
    options = {"queue": queue, "retry": {"max_attempts": 1, **retry}}
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/jobs", {"type": "ret.t", "args": [], "options": options}
    )
    assert status == 201, body
    job_id = str(body["job"]["id"])
    status, body = request("POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": [queue]})
    assert status == 200 and [j["id"] for j in body["jobs"]] == [job_id], body
    if outcome == "ack":
        status, body = request("POST", f"{daemon.url}/ojs/v1/workers/ack", {"job_id": job_id})
    else:
        error = {"code": "boom", "message": "failed on purpose"}
        status, body = request(
            "POST", f"{daemon.url}/ojs/v1/workers/nack", {"job_id": job_id, "error": error}
        )
    assert status == 200, body
    return job_id


def _state(daemon: Daemon, job_id: str) -> str | None:
    status, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{job_id}")
    return str(body["job"]["state"]) if status == 200 else None


def test_finished_jobs_leave_the_store_after_the_configured_retention(
    make_daemon: Callable[..., Daemon],
) -> None:
    # Given a daemon keeping completed jobs 2 s and discarded ones 4 s
    daemon = make_daemon("--retention-completed", "PT2S", "--retention-discarded", "4000")
    queue = f"ret-{uuid.uuid4().hex[:6]}"
    completed = _finish(daemon, queue, "ack")
    discarded = _finish(daemon, queue, "nack", on_exhaustion="discard")
    dead = _finish(daemon, queue, "nack", on_exhaustion="dead_letter")
    states = [_state(daemon, j) for j in (completed, discarded, dead)]
    assert states == ["completed", "discarded", "discarded"]
    # When the retentions pass, then each job goes when its own retention says
    deadline = time.monotonic() + 15
    while _state(daemon, completed) is not None:
        assert time.monotonic() < deadline, "the completed job was never removed"
        time.sleep(0.2)
    assert _state(daemon, discarded) == "discarded"  # 4 s, not 2
    while _state(daemon, discarded) is not None:
        assert time.monotonic() < deadline, "the discarded job was never removed"
        time.sleep(0.2)
    # And the dead letter stays: dead letters have their own retention (180 days)
    assert _state(daemon, dead) == "discarded"
    status, body = request("GET", f"{daemon.url}/ojs/v1/dead-letter?queue={queue}")
    assert status == 200 and [j["id"] for j in body["jobs"]] == [dead], body
