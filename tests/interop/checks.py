"""What the interop tests ask the daemon over HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from tests.daemon import Daemon, request


def new_queue(test: str) -> str:
    """A queue name no other test uses: the test's short name plus a random suffix."""
    return f"{test}-{uuid.uuid4().hex[:8]}"


def http_push(daemon: Daemon, queue: str, job_type: str, args: list[Any]) -> str:
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/jobs", {"type": job_type, "args": args, "queue": queue}
    )
    assert status == 201, body
    job_id: str = body["job"]["id"]
    return job_id


def http_job(daemon: Daemon, job_id: str) -> dict[str, Any]:
    status, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{job_id}")
    assert status == 200, (job_id, status, body)
    job: dict[str, Any] = body["job"]
    return job


def wait_states(
    daemon: Daemon, job_ids: Iterable[str], state: str, within: float = 15.0
) -> dict[str, dict[str, Any]]:
    """Poll GET /ojs/v1/jobs/{id} until every job is in `state`; the jobs by id."""
    pending = list(job_ids)
    jobs: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + within
    while pending:
        status, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{pending[0]}")
        if status == 200 and body["job"]["state"] == state:
            jobs[pending.pop(0)] = body["job"]
            continue
        assert time.monotonic() < deadline, f"{pending[0]} never became {state}: {body}"
        time.sleep(0.05)
    return jobs
