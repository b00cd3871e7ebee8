"""The broker link drops again while the daemon replays its outbox after a reconnect.

After every reconnect the daemon publishes the store rows whose copy was never confirmed
(its outbox). If the link drops during that replay, the replay fails part-way; the daemon
must still notice the new loss, reconnect again, and finish the replay then. (Before the
reconnect loop had an error policy for its hooks, the replay's exception ended the loop:
the daemon stayed disconnected for good, health 503, every job stuck.)

The outbox is filled the way a second daemon sharing the store leaves it when it dies
between accepting pushes and confirming their copies: rows written with `published=False`.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ojs_amqp.core.envelope import parse_enqueue
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.store.sqlite import SqliteJobStore
from tests.daemon import Daemon, request
from tests.faults.proxy import TcpProxy
from tests.rabbit_node import RabbitNode
from tests.workload import metric, read_jobs, state_of

QUEUE = "flap"
#: Enough rows that replaying them takes a few seconds (one confirmed publish each).
OUTBOX_ROWS = 3000
PUSHED = 20


@pytest.fixture
def proxy(rabbit_node: RabbitNode) -> Iterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", rabbit_node.port).start()
    yield proxy
    proxy.close()


def _health(daemon: Daemon) -> int:
    status, _ = request("GET", f"{daemon.url}/ojs/v1/health", timeout=10.0)
    return status


def _wait_for_health(daemon: Daemon, status: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if _health(daemon) == status:
            return True
        time.sleep(0.02)
    return False


def _wait_for_reconnections(daemon: Daemon, count: int, within_s: float) -> bool:
    """The daemon counts a reconnection once it is set up again, just before its replay."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if metric(daemon.url, "ojs_amqp_reconnections_total") >= count:
            return True
        time.sleep(0.02)
    return False


def _fill_outbox(store_path: Path, count: int) -> list[str]:
    """Rows a push writes before its copy is confirmed, from another process on the store."""
    ids = UUIDv7Generator()

    async def fill() -> list[str]:
        store = SqliteJobStore(str(store_path))
        await store.open()
        try:
            made = []
            for _ in range(count):
                now = int(time.time() * 1000)
                body = {"type": "flap.test", "args": [], "options": {"queue": QUEUE}}
                job = parse_enqueue(body, now_ms=now, new_id=ids.new(now))
                await store.insert(job, published=False)
                made.append(job.id)
            return made
        finally:
            await store.close()

    return asyncio.run(fill())


def _work_off(daemon: Daemon, ids: set[str], within_s: float) -> set[str]:
    """Fetch and ack until every job in `ids` has been acked; returns those never fetched."""
    left = set(ids)
    deadline = time.monotonic() + within_s
    while left and time.monotonic() < deadline:
        status, body = request(
            "POST", f"{daemon.url}/ojs/v1/workers/fetch",
            {"queues": [QUEUE], "count": 100, "worker_id": "flap-worker"},
        )  # fmt: skip
        assert status == 200, (status, body)
        for job in body["jobs"]:
            status, reply = request(
                "POST", f"{daemon.url}/ojs/v1/workers/ack",
                {"job_id": job["id"], "worker_id": "flap-worker", "result": {"ok": True}},
            )  # fmt: skip
            assert status in (200, 409), (status, reply)
            left.discard(job["id"])
    return left


def test_a_flap_during_the_outbox_replay_is_ridden_out_and_every_job_completes(
    rabbit_node: RabbitNode, proxy: TcpProxy, make_node_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_node_daemon(amqp=proxy.url(rabbit_node.amqp_url))
    assert metric(daemon.url, "ojs_amqp_fast_path") == 1  # the pinned aiormq's fast path
    # Given jobs accepted while the broker is up
    pushed = []
    for n in range(PUSHED):
        status, body = request(
            "POST", f"{daemon.url}/ojs/v1/jobs",
            {"type": "flap.test", "args": [n], "options": {"queue": QUEUE}},
        )  # fmt: skip
        assert status == 201, (status, body)
        pushed.append(body["job"]["id"])
    # and the broker out of reach, while rows whose copies were never confirmed are written
    proxy.cut()
    assert _wait_for_health(daemon, 503, 30.0), "the daemon did not notice the cut"
    orphans = _fill_outbox(daemon.store, OUTBOX_ROWS)

    # When the link comes back, and drops again while the daemon replays that outbox
    proxy.restore()
    assert _wait_for_reconnections(daemon, 1, 60.0), "the daemon did not reconnect at first"
    replaying = metric(daemon.url, "ojs_outbox_pending")
    proxy.cut()
    assert replaying > 0, "the replay was over before the second cut: the test proves nothing"
    assert _wait_for_health(daemon, 503, 30.0), "the daemon did not notice the second cut"
    time.sleep(2.0)
    proxy.restore()

    # Then the daemon reconnects by itself
    assert _wait_for_reconnections(daemon, 2, 60.0), (
        f"the daemon did not reconnect after a drop during its outbox replay (the replay "
        f"had {replaying:.0f} rows left); see {daemon.log_path}"
    )
    assert _wait_for_health(daemon, 200, 30.0)
    # and every accepted job completes, the replayed ones included
    everything = set(pushed) | set(orphans)
    never_fetched = _work_off(daemon, everything, 120.0)
    assert not never_fetched, f"{len(never_fetched)} jobs never reached a worker"
    deadline = time.monotonic() + 30.0
    states: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        states = {i: state_of(j) for i, j in read_jobs(daemon.url, everything).items()}
        if all(state == "completed" for state in states.values()):
            break
        time.sleep(0.5)
    not_completed = {i: s for i, s in states.items() if s != "completed"}
    assert not not_completed, f"{len(not_completed)} jobs not completed, e.g. " + str(
        list(not_completed.items())[:5]
    )
    assert metric(daemon.url, "ojs_outbox_pending") == 0
    # and the failed replay was counted, not lost: at least the one the second cut broke
    assert _failures(daemon.url, "after a reconnect") >= 1


def _failures(url: str, task: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ojs_background_failures_total" and sample.labels == {"task": task}:
                return float(sample.value)
    return 0.0
