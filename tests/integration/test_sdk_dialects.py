"""What the official OJS SDKs send and read, against a real daemon and broker: both heartbeat
forms, refusals of what is not built (endpoints and options, on every push path), both cron
shapes, and the JSON media type switch."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest

from ojs_amqp.amqp import protocol
from ojs_amqp.amqp.topology import Topology
from tests.daemon import AMQP_URL, Daemon, request
from tests.integration.test_native_binding import Client

pytestmark = pytest.mark.integration


def _queue() -> str:
    return f"dia{uuid.uuid4().hex[:8]}"


def _push(daemon: Daemon, queue: str, **options: Any) -> str:
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/jobs",
        {"type": "dialect.test", "args": [1], "options": {"queue": queue, **options}},
    )  # fmt: skip
    assert status == 201, body
    return str(body["job"]["id"])


def _fetch(daemon: Daemon, queue: str, worker: str) -> list[dict[str, Any]]:
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": [queue], "worker_id": worker}
    )
    assert status == 200, body
    jobs: list[dict[str, Any]] = body["jobs"]
    return jobs


def _beat(daemon: Daemon, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = request("POST", f"{daemon.url}/ojs/v1/workers/heartbeat", body)
    assert status == 200, answer
    return dict(answer)


# --- heartbeats ----------------------------------------------------------------------------

BEATS: dict[str, Callable[[str], dict[str, Any]]] = {
    "binding list": lambda job_id: {"worker_id": "w-1", "active_jobs": [job_id]},
    "worker protocol count": lambda job_id: {
        "worker_id": "w-1", "state": "running", "active_jobs": 1, "active_job_ids": [job_id],
        "hostname": "h", "pid": 7, "queues": ["q"], "concurrency": 1,
    },
}  # fmt: skip


@pytest.mark.parametrize("form", sorted(BEATS))
def test_both_heartbeat_forms_extend_the_lease(module_daemon: Daemon, form: str) -> None:
    queue = _queue()
    job_id = _push(module_daemon, queue, visibility_timeout_ms=2000)
    assert [j["id"] for j in _fetch(module_daemon, queue, "w-1")] == [job_id]
    answer = _beat(module_daemon, BEATS[form](job_id))
    assert answer["jobs_extended"] == [job_id] and answer["state"] == "running"


def test_a_long_job_with_a_short_lease_and_count_form_heartbeats_runs_once(
    module_daemon: Daemon,
) -> None:
    """9 s of work under a 3 s lease, beating once a second the way the JS SDK does."""
    queue = _queue()
    job_id = _push(module_daemon, queue, visibility_timeout_ms=3000)
    assert [j["id"] for j in _fetch(module_daemon, queue, "w-1")] == [job_id]
    started = time.monotonic()
    while time.monotonic() - started < 9:
        answer = _beat(module_daemon, BEATS["worker protocol count"](job_id))
        assert answer["jobs_extended"] == [job_id]
        # Another worker fetching meanwhile (each FETCH waits up to 1 s) never gets the job.
        assert _fetch(module_daemon, queue, "w-2") == []
    status, body = request(
        "POST", f"{module_daemon.url}/ojs/v1/workers/ack",
        {"job_id": job_id, "worker_id": "w-1", "result": "done"},
    )  # fmt: skip
    assert status == 200, body
    _, body = request("GET", f"{module_daemon.url}/ojs/v1/jobs/{job_id}")
    assert body["job"]["state"] == "completed" and body["job"]["attempt"] == 1


def test_a_count_without_ids_extends_nothing_and_the_lease_runs_out(
    module_daemon: Daemon,
) -> None:
    """The control for the test above: a beat that names no job does not keep it leased."""
    queue = _queue()
    job_id = _push(module_daemon, queue, visibility_timeout_ms=1000)
    assert [j["id"] for j in _fetch(module_daemon, queue, "w-1")] == [job_id]
    assert _beat(module_daemon, {"worker_id": "w-1", "active_jobs": 1})["jobs_extended"] == []
    deadline = time.monotonic() + 10
    again: list[dict[str, Any]] = []
    while not again and time.monotonic() < deadline:
        again = _fetch(module_daemon, queue, "w-2")
    assert [j["id"] for j in again] == [job_id] and again[0]["attempt"] == 2


# --- refusals ------------------------------------------------------------------------------


def test_an_endpoint_not_built_answers_unsupported_and_an_unknown_path_404(
    module_daemon: Daemon,
) -> None:
    status, body = request("POST", f"{module_daemon.url}/ojs/v1/workflows", {"type": "chain"})
    assert status == 422 and body["error"]["code"] == "unsupported"
    assert "conformance level 3" in body["error"]["message"]
    status, body = request("POST", f"{module_daemon.url}/ojs/v1/jobs/batch", {"jobs": []})
    assert status == 422 and body["error"]["details"]["level"] == 4
    status, body = request("GET", f"{module_daemon.url}/ojs/v1/nowhere")
    assert status == 404 and "path" in body["error"]["hint"]
    _, manifest = request("GET", f"{module_daemon.url}/ojs/manifest")
    assert manifest["capabilities"]["workflows"] is False
    assert manifest["capabilities"]["batch_enqueue"] is False


@pytest.mark.parametrize(
    ("options", "field"),
    [({"unique": {"keys": ["type", "args"]}}, "options.unique"),
     ({"rate_limit": {"key": "k", "concurrency": 1}}, "options.rate_limit")],
)  # fmt: skip
def test_an_unhonoured_option_is_refused_on_http_push(
    module_daemon: Daemon, options: dict[str, Any], field: str
) -> None:
    queue = _queue()
    body = {"type": "dialect.test", "args": [1], "options": {"queue": queue, **options}}
    for _ in range(2):  # a duplicate is refused the same way, not accepted with 201
        status, answer = request("POST", f"{module_daemon.url}/ojs/v1/jobs", body)
        assert status == 422 and answer["error"]["code"] == "unsupported"
        assert answer["error"]["details"]["field"] == field
    assert _fetch(module_daemon, queue, "w-1") == []  # nothing was enqueued
    # Unknown fields keep working: kept and returned.
    status, answer = request(
        "POST", f"{module_daemon.url}/ojs/v1/jobs",
        {"type": "dialect.test", "args": [], "x_mine": {"k": 1}, "options": {"queue": queue}},
    )  # fmt: skip
    assert status == 201 and answer["job"]["x_mine"] == {"k": 1}


def test_a_cron_template_with_an_unhonoured_option_is_refused(module_daemon: Daemon) -> None:
    name = f"c-{uuid.uuid4().hex[:8]}"
    status, body = request(
        "POST", f"{module_daemon.url}/ojs/v1/cron",
        {"name": name, "expression": "* * * * *",
         "job_template": {"type": "t.x", "args": [], "options": {"unique": {"keys": ["args"]}}}},
    )  # fmt: skip
    assert status == 422 and body["error"]["code"] == "unsupported", body
    assert request("GET", f"{module_daemon.url}/ojs/v1/cron/{name}")[0] == 404


@pytest.fixture
async def amqp_client(module_daemon: Daemon) -> AsyncIterator[Client]:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        client = Client(channel, Topology(module_daemon.prefix))
        await client.start()
        yield client


async def test_an_unhonoured_option_is_refused_on_the_amqp_submit_path(
    amqp_client: Client,
) -> None:
    queue = _queue()
    job = {"type": "dialect.test", "args": [1], "queue": queue, "unique": {"keys": ["args"]}}
    answer = await amqp_client.publish(amqp_client.t.submit_exchange, queue, job, rpc=True)
    assert answer["error"]["code"] == "unsupported" and "unique" in answer["error"]["message"]
    # Without reply_to the submission lands in ojs.rejected with the reason.
    rejected = await amqp_client.channel.get_queue(amqp_client.t.rejected_queue, ensure=False)
    marker = uuid.uuid4().hex
    await amqp_client.publish(
        amqp_client.t.submit_exchange, queue,
        {**job, "unique": None, "options": {"rate_limit": {"key": "k"}}}, message_id=marker,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        message = await rejected.get(fail=False)
        if message is not None:
            await message.ack()
            if message.message_id == marker:
                break
        assert time.monotonic() < deadline, "the refused submission never reached ojs.rejected"
        await asyncio.sleep(0.05)
    assert message.headers[protocol.H_ERROR_CODE] == "unsupported"
    assert "options.rate_limit" in str(message.headers[protocol.H_ERROR_MESSAGE])


# --- cron shapes ---------------------------------------------------------------------------


def test_cron_answers_carry_both_shapes_and_the_list_pages(module_daemon: Daemon) -> None:
    base = f"{module_daemon.url}/ojs/v1/cron"
    tag = uuid.uuid4().hex[:6]
    names = [f"shape-{tag}-{i}" for i in range(3)]
    for name in names:
        status, body = request("POST", base, {
            "name": name, "expression": "0 3 * * *",
            "job_template": {"type": "report.nightly", "args": [name],
                             "options": {"queue": "reports"}},
        })  # fmt: skip
        assert status == 201, body
        assert body["cron"] == body["cron_job"]
        assert body["cron"]["expression"] == body["cron"]["cron"] == "0 3 * * *"
        assert body["cron_job"]["type"] == "report.nightly" and body["cron_job"]["args"] == [name]
        assert body["cron_job"]["status"] == "active"
    # The binding's registration form (cron, type, args, options at the top) is read too.
    status, body = request("POST", base, {"name": f"shape-{tag}-b", "cron": "*/5 * * * *",
                                          "type": "t.b", "args": [2]})  # fmt: skip
    assert status == 201 and body["cron"]["job_template"]["type"] == "t.b"
    names.append(f"shape-{tag}-b")

    _, whole = request("GET", f"{base}?limit=200")
    ours = [c["name"] for c in whole["crons"] if c["name"].startswith(f"shape-{tag}")]
    assert ours == sorted(names) and whole["cron_jobs"] == whole["crons"]
    total = whole["pagination"]["total"]
    _, first = request("GET", f"{base}?limit=2")
    assert len(first["crons"]) == 2 and first["cron_jobs"] == first["crons"]
    assert first["pagination"] == {"total": total, "limit": 2, "offset": 0,
                                   "has_more": total > 2,
                                   "next_cursor": "2" if total > 2 else None}  # fmt: skip
    _, second = request("GET", f"{base}?limit=2&offset=2")
    assert [c["name"] for c in second["crons"]] == [c["name"] for c in whole["crons"][2:4]]

    _, one = request("GET", f"{base}/{names[0]}")
    assert one["cron"]["name"] == one["cron_job"]["name"] == names[0]
    for name in names:
        status, gone = request("DELETE", f"{base}/{name}")
        assert status == 200 and gone["deleted"] is True and gone["name"] == name
        assert gone["cron"]["name"] == gone["cron_job"]["name"] == name


# --- media type ----------------------------------------------------------------------------


def _content_type(url: str, body: Any = None) -> tuple[int, str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], json.loads(err.read())


def test_the_response_media_type_switch(
    module_daemon: Daemon, make_daemon: Callable[..., Daemon]
) -> None:
    plain = make_daemon("--response-media-type", "application/json")
    job = {"type": "dialect.test", "args": [], "options": {"queue": _queue()}}
    status, media, body = _content_type(f"{plain.url}/ojs/v1/jobs", job)
    assert (status, media) == (201, "application/json") and body["job"]["type"] == "dialect.test"
    status, media, body = _content_type(f"{plain.url}/ojs/v1/jobs/not-a-job")
    assert (status, media) == (404, "application/json") and body["error"]["code"] == "not_found"
    # The default stays the spec's.
    status, media, _ = _content_type(f"{module_daemon.url}/ojs/v1/jobs", job)
    assert (status, media) == (201, "application/openjobspec+json")
