"""Removing queues: `DELETE /ojs/v1/queues/{q}`, `ojs-amqp queues delete`, and the test-mode
reset deleting (not purging) the broker queues of every OJS queue, on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import aiormq
import pytest

from ojs_amqp.amqp.topology import Topology
from ojs_amqp.engine import deletion as jobs_module
from ojs_amqp.engine.deletion import RESET_DELETE_BUDGET_S
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.errors import OjsError
from tests.daemon import Daemon, request

pytestmark = pytest.mark.integration


def push(daemon: Daemon, queue: str, **options: Any) -> dict[str, Any]:
    body = {"type": "qd.job", "args": [], "options": {"queue": queue, **options}}
    status, answer = request("POST", f"{daemon.url}/ojs/v1/jobs", body)
    assert status == 201, answer
    return dict(answer["job"])


def fetch(daemon: Daemon, queue: str) -> list[dict[str, Any]]:
    status, answer = request(
        "POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": [queue], "worker_id": "w1"}
    )
    assert status == 200, answer
    return list(answer["jobs"])


def existing(amqp_url: str, names: list[str]) -> set[str]:
    """Which of `names` exist on the broker (passive declares: any broker version)."""

    async def probe() -> set[str]:
        found: set[str] = set()
        connection = await aiormq.connect(amqp_url)
        try:
            channels = [await connection.channel() for _ in range(8)]

            async def check(part: list[str], index: int) -> None:
                channel = channels[index]
                for name in part:
                    try:
                        await channel.queue_declare(name, passive=True)
                        found.add(name)
                    except aiormq.exceptions.ChannelNotFoundEntity:
                        channel = channels[index] = await connection.channel()

            await asyncio.gather(*(check(names[i::8], i) for i in range(8)))
        finally:
            await connection.close()
        return found

    return asyncio.run(probe())


def per_queue_names(t: Topology, queue: str) -> list[str]:
    return [spec.name for spec in t.queues_of(queue)]


def test_a_queue_with_open_jobs_is_refused_then_forced_and_comes_back_on_a_push(
    daemon: Daemon,
) -> None:
    t = Topology(daemon.prefix)
    queue = f"qd-{uuid.uuid4().hex[:6]}"
    done = push(daemon, queue)
    assert [j["id"] for j in fetch(daemon, queue)] == [done["id"]]
    status, _ = request("POST", f"{daemon.url}/ojs/v1/workers/ack",
                        {"job_id": done["id"], "worker_id": "w1"})  # fmt: skip
    assert status == 200
    leased = push(daemon, queue)
    assert [j["id"] for j in fetch(daemon, queue)] == [leased["id"]]
    waiting = push(daemon, queue)
    soon = (datetime.now(UTC) + timedelta(seconds=3)).isoformat().replace("+00:00", "Z")
    timer = push(daemon, queue, delay_until=soon)
    assert timer["state"] == "scheduled"

    status, body = request("DELETE", f"{daemon.url}/ojs/v1/queues/{queue}")
    assert status == 409, body
    assert body["error"]["code"] == "conflict"
    assert body["error"]["details"]["open_jobs"] == {"active": 1, "available": 1, "scheduled": 1}
    assert existing(daemon.amqp_url, per_queue_names(t, queue)) == set(per_queue_names(t, queue))
    status, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{waiting['id']}")
    assert status == 200 and body["job"]["state"] == "available"

    status, body = request("DELETE", f"{daemon.url}/ojs/v1/queues/{queue}?force=true")
    assert status == 200, body
    assert body["jobs_cancelled"] == 3 and body["jobs_deleted"] == 4, body
    assert sorted(body["broker_queues"]) == sorted(per_queue_names(t, queue))
    assert existing(daemon.amqp_url, per_queue_names(t, queue)) == set()
    for job in (done, leased, waiting, timer):
        status, _ = request("GET", f"{daemon.url}/ojs/v1/jobs/{job['id']}")
        assert status == 404
    status, body = request("GET", f"{daemon.url}/ojs/v1/queues")
    assert queue not in [q["name"] for q in body["queues"]]
    status, body = request("GET", f"{daemon.url}/ojs/v1/events?types=job.cancelled&queue={queue}")
    cancelled = {e["data"]["job_id"] for e in body["events"]}
    assert cancelled == {waiting["id"], leased["id"], timer["id"]}, body
    assert {e["data"].get("reason") for e in body["events"]} == {"queue_deleted"}
    # The worker that held a lease learns the job is gone.
    status, body = request("POST", f"{daemon.url}/ojs/v1/workers/ack",
                           {"job_id": leased["id"], "worker_id": "w1"})  # fmt: skip
    assert status == 404, body

    # The scheduled job's timer comes due on the ladder: no job, so nothing is published and
    # the queue stays deleted.
    time.sleep(4.0)
    assert existing(daemon.amqp_url, per_queue_names(t, queue)) == set()

    again = push(daemon, queue)
    assert existing(daemon.amqp_url, per_queue_names(t, queue)) == set(per_queue_names(t, queue))
    assert [j["id"] for j in fetch(daemon, queue)] == [again["id"]]
    status, body = request("GET", f"{daemon.url}/ojs/v1/queues")
    assert queue in [q["name"] for q in body["queues"]]


def test_a_queue_of_finished_jobs_is_deleted_without_force(daemon: Daemon) -> None:
    t = Topology(daemon.prefix)
    queue = f"qd-{uuid.uuid4().hex[:6]}"
    job = push(daemon, queue)
    status, _ = request("DELETE", f"{daemon.url}/ojs/v1/jobs/{job['id']}")
    assert status == 200
    status, body = request("DELETE", f"{daemon.url}/ojs/v1/queues/{queue}")
    assert status == 200, body
    assert body["jobs_cancelled"] == 0 and body["jobs_deleted"] == 1
    assert existing(daemon.amqp_url, per_queue_names(t, queue)) == set()


def test_deleting_an_unknown_or_invalid_queue_is_a_clear_error(daemon: Daemon) -> None:
    status, body = request("DELETE", f"{daemon.url}/ojs/v1/queues/never-seen")
    assert status == 404 and body["error"]["code"] == "not_found", body
    status, body = request("DELETE", f"{daemon.url}/ojs/v1/queues/Bad_Name")
    assert status == 400 and body["error"]["code"] == "invalid_request", body
    push(daemon, "qd-flag")
    status, body = request("DELETE", f"{daemon.url}/ojs/v1/queues/qd-flag?force=maybe")
    assert status == 400 and body["error"]["details"] == {"field": "force"}, body


def cli(daemon: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ojs_amqp", *argv],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "OJS_URL": daemon.url},
    )  # fmt: skip


def test_the_cli_refuses_a_busy_queue_and_deletes_it_with_force(daemon: Daemon) -> None:
    t = Topology(daemon.prefix)
    queue = f"qd-{uuid.uuid4().hex[:6]}"
    push(daemon, queue)
    refused = cli(daemon, "queues", "delete", queue)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: conflict: ") and "force" in refused.stderr
    forced = cli(daemon, "queues", "delete", queue, "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    answer = json.loads(forced.stdout)
    assert answer["deleted"] is True and answer["jobs_cancelled"] == 1
    assert existing(daemon.amqp_url, per_queue_names(t, queue)) == set()
    listed = cli(daemon, "queues")
    assert listed.returncode == 0 and queue not in listed.stdout


def test_500_queues_created_and_reset_leave_no_more_broker_queues_than_one_pass(
    make_daemon: Callable[..., Daemon],
) -> None:
    """The issue's "done when": 10 rounds of 50 new queues (one job each, a few fetched),
    each round ended by the test-mode reset. Afterwards only the fixed topology is left, as
    after one round, every reset answered within its bound, and the broker still accepts
    connections."""
    daemon = make_daemon()
    t = Topology(daemon.prefix)
    fixed = t.all_fixed_queues()
    rounds, per_round = 10, 50
    all_names: list[str] = []
    after: list[int] = []
    reset_s: list[float] = []
    push_s: list[float] = []
    for r in range(rounds):
        queues = [f"loop-{r}-{i}" for i in range(per_round)]
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda queue: push(daemon, queue), queues))
        push_s.append(time.monotonic() - started)
        for queue in queues[:5]:  # gateways and buffers too
            assert len(fetch(daemon, queue)) == 1
        names = [n for q in queues for n in per_queue_names(t, q)]
        all_names += names
        started = time.monotonic()
        status, body = request("POST", f"{daemon.url}/ojs/v1/admin/reset")
        reset_s.append(time.monotonic() - started)
        assert status == 200, body
        after.append(len(existing(daemon.amqp_url, names + fixed)))
    print(f"\nreset took {min(reset_s):.2f}-{max(reset_s):.2f} s for {per_round} queues "
          f"({3 * per_round} broker queues; pushing to them took {min(push_s):.1f}-"
          f"{max(push_s):.1f} s); broker queues left per round: {after}")  # fmt: skip
    assert after == [len(fixed)] * rounds
    assert existing(daemon.amqp_url, all_names) == set()  # nothing came back later either
    assert max(reset_s) < RESET_DELETE_BUDGET_S + 5.0
    assert existing(daemon.amqp_url, fixed) == set(fixed)  # the fixed topology stays

    async def connect() -> str:
        connection = await aiormq.connect(daemon.amqp_url)
        version = connection.server_properties.get("version", b"?")
        await connection.close()
        return version.decode() if isinstance(version, bytes) else str(version)

    print(f"broker {asyncio.run(connect())} still accepts connections")
    # The daemon works after all that: a push and fetch on a reused name, and a timer.
    job = push(daemon, "loop-0-0")
    assert [j["id"] for j in fetch(daemon, "loop-0-0")] == [job["id"]]
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    timed = push(daemon, "loop-1-1", delay_until=soon)
    deadline = time.monotonic() + 10
    state = "scheduled"
    while time.monotonic() < deadline and state != "available":
        time.sleep(0.2)
        _, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{timed['id']}")
        state = body["job"]["state"]
    assert state == "available"


async def test_a_push_to_a_queue_still_being_deleted_after_a_reset_waits_and_recreates_it(
    live_engine: JobEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reset past its budget leaves deletes running; a use of such a queue waits for its
    delete, so the delete never removes the queue again under the new job."""
    engine = live_engine
    queues = [f"gate-{i}" for i in range(20)]
    for queue in queues:
        await engine.push({"type": "qd.job", "args": [], "options": {"queue": queue}})
    monkeypatch.setattr(jobs_module, "RESET_DELETE_BUDGET_S", 0.0)
    await engine.reset()
    pending = [engine.queues.deleting.get(q) for q in queues]
    assert any(p is not None and not p.done() for p in pending), "all deleted within 0 s"
    job = await engine.push({"type": "qd.job", "args": [], "options": {"queue": queues[-1]}})
    assert all(p is None or p.done() for p in pending[-1:])
    fetched = await engine.fetch([queues[-1]], 1, "w1", None)
    assert [j.id for j in fetched] == [job.id]
    await asyncio.wait([p for p in pending if p is not None], timeout=30)
    t = engine.broker.topology
    connection = await aiormq.connect(engine.broker._url)
    try:
        channel = await connection.channel()
        await channel.queue_declare(t.job_queue(queues[-1]), passive=True)  # recreated
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await channel.queue_declare(t.job_queue(queues[0]), passive=True)  # deleted
    finally:
        await connection.close()


async def test_pushes_racing_a_forced_delete_end_deleted_or_fetchable_never_lost(
    live_engine: JobEngine,
) -> None:
    """Pushes before, during and after a forced delete of their queue: each job is either
    gone with the queue (deleted, or refused to its producer) or available and fetchable
    from the queue as it comes back; none is left available in the store with no message."""
    engine = live_engine
    queue = "race"
    await engine.push({"type": "qd.job", "args": [], "options": {"queue": queue}})
    body = {"type": "qd.job", "args": [], "options": {"queue": queue}}
    before = [asyncio.ensure_future(engine.push(body)) for _ in range(20)]
    deleting = asyncio.ensure_future(engine.delete_queue(queue, force=True))
    after = [asyncio.ensure_future(engine.push(body)) for _ in range(20)]
    results = await asyncio.gather(*before, deleting, *after, return_exceptions=True)
    answer = results[len(before)]
    assert isinstance(answer, dict) and answer["deleted"] is True, answer
    pushed = [r for r in results if not isinstance(r, dict | BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, OjsError) for r in refused), refused
    survivors = set()
    for job in pushed:
        stored = await engine.store.get(job.id)
        if stored is not None:
            assert stored.state.value == "available", stored
            survivors.add(job.id)
    fetched: set[str] = set()
    for _ in range(10):
        if fetched >= survivors:
            break
        fetched |= {j.id for j in await engine.fetch([queue], 100, "w1", None)}
    assert fetched == survivors
    print(f"\n{len(pushed)} pushed, {len(refused)} refused, {len(survivors)} kept, "
          f"{answer['jobs_cancelled']} cancelled with the queue")  # fmt: skip
