"""A broker that accepts TCP and then says nothing: at start, and mid-run behind the proxy.

RabbitMQ out of file handles, a paused broker VM and a load balancer in front of a dead node
all look like this: connections are accepted, no byte comes back. Every broker wait has a
timeout (--amqp-*-timeout-ms), so:

- at start, each connection attempt logs one line naming the broker (never its password)
  and what it waited for, and the daemon exits 2 with that message once attempts run out;
- mid-run (the proxy stops forwarding without closing anything), pushes answer 503 within
  their timeout or complete, health says `degraded` with the reason, the daemon drops the
  silent connection and reconnects once the broker answers again, and every push that was
  accepted (201) completes;
- the SDK client fails within its own timeout instead of hanging.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.errors import BackendUnavailable, BrokerStalled
from ojs_amqp.sdk import Client
from tests.daemon import Daemon, request
from tests.faults.proxy import SilentListener, TcpProxy
from tests.rabbit_node import RabbitNode
from tests.workload import metric

HANDSHAKE = "the broker accepted the connection but did not answer the AMQP handshake"
#: Every broker wait of the mid-run daemon, in ms (small, so the test is quick).
WAIT_MS = 2000
#: What a push may take beyond one broker wait: HTTP, the store, a loaded CI machine.
SLACK_S = 2.5


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    listener = SilentListener()
    yield listener
    listener.close()


@pytest.fixture
def proxy(rabbit_node: RabbitNode) -> Iterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", rabbit_node.port).start()
    yield proxy
    proxy.close()


def test_start_against_a_silent_broker_exits_2_saying_why(
    silent: SilentListener, tmp_path: Path
) -> None:
    # Given a "broker" that accepts TCP and never answers, two attempts of 1.5 s each
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable, "-m", "ojs_amqp", "serve",
            "--amqp-url", silent.url(password="s3cret-pw"),
            "--connect-attempts", "2", "--amqp-connect-timeout-ms", "1500",
            "--store", str(tmp_path / "jobs.db"), "--http", "127.0.0.1:0",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    took = time.monotonic() - started

    # Then it exits 2 within the attempts' time (2 x 1.5 s, a backoff of at most 1.25 s,
    # the interpreter's start), saying what it waited for and where to read more
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert took < 12, f"took {took:.1f}s"
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ojs-amqp: cannot reach the broker at {silent.url('***')}"), last
    assert f"{HANDSHAKE} within 1.5 s" in last and "docs/operations.md" in last, last
    # one log line per attempt, naming the broker without its password
    for n in (1, 2):
        lines = [line for line in done.stderr.splitlines() if f"attempt {n} of 2 failed" in line]
        assert len(lines) == 1, done.stderr
        assert f"broker {silent.url('***')}" in lines[0] and HANDSHAKE in lines[0], lines[0]
    assert "s3cret-pw" not in done.stderr
    assert len(silent.accepted) >= 2  # the publishing connection, once per attempt


def test_sdk_client_against_a_silent_broker_fails_within_its_timeout(
    silent: SilentListener,
) -> None:
    async def push() -> tuple[BaseException | None, float]:
        client = Client(silent.url(), timeout=1.0, connect_attempts=1)
        started = time.monotonic()
        try:
            await client.push("stall.probe", [])
        except BackendUnavailable as exc:
            return exc, time.monotonic() - started
        finally:
            await client.close()
        return None, time.monotonic() - started

    error, took = asyncio.run(asyncio.wait_for(push(), 30))
    assert isinstance(error, BrokerStalled), f"the push did not fail as stalled: {error!r}"
    assert HANDSHAKE in str(error) and "within 1 s" in str(error), error
    assert took < 1.0 + SLACK_S, f"the client waited {took:.1f}s"


class Pusher:
    """Pushes one job after another from a thread, recording (id, status, seconds, queue)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[str, int, float, str]] = []
        self._ids = UUIDv7Generator()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pusher", daemon=True)
        self.new_queues = 0

    def start(self) -> Pusher:
        self._thread.start()
        return self

    def push(self, queue: str) -> tuple[int, float]:
        job_id = self._ids.new(int(time.time() * 1000))
        body = {"id": job_id, "type": "stall.probe", "args": [], "options": {"queue": queue}}
        sent = time.monotonic()
        status, _ = request("POST", f"{self.url}/ojs/v1/jobs", body, timeout=60)
        took = time.monotonic() - sent
        self.results.append((job_id, status, took, queue))
        return status, took

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            # mostly a queue the daemon has declared; every fifth push a new one
            if n % 5 == 0:
                self.new_queues += 1
                self.push(f"stall-new-{self.new_queues}")
            else:
                self.push("stall")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


def _wait_for(what: str, check: Callable[[], bool], deadline_s: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < deadline_s, f"{what} did not happen in {deadline_s}s"
        time.sleep(0.1)
    return time.monotonic() - started


def _health(url: str) -> tuple[float, str, str]:
    """(seconds it took, overall status, the broker's reason if any) of GET /ojs/v1/health,
    read from the broker component (`components.broker`, else `backend`)."""
    sent = time.monotonic()
    _, body = request("GET", f"{url}/ojs/v1/health", timeout=30)
    took = time.monotonic() - sent
    broker = body.get("components", {}).get("broker") or body["backend"]
    return took, body["status"], str(broker.get("reason") or broker.get("error") or "")


def _drain(url: str, queue: str) -> list[str]:
    """Fetch and ack every job of `queue` until two fetches come back empty."""
    done: list[str] = []
    empty = 0
    while empty < 2:
        status, body = request(
            "POST", f"{url}/ojs/v1/workers/fetch", {"queues": [queue], "count": 50}
        )
        assert status == 200, body
        empty = 0 if body["jobs"] else empty + 1
        for job in body["jobs"]:
            assert request("POST", f"{url}/ojs/v1/workers/ack", {"job_id": job["id"]})[0] == 200
            done.append(job["id"])
    return done


def test_a_broker_frozen_mid_run_bounds_every_push_and_loses_nothing_accepted(
    rabbit_node: RabbitNode, proxy: TcpProxy, make_node_daemon: Callable[..., Daemon]
) -> None:
    # Given a daemon whose broker link goes through the proxy, every wait bounded by 2 s
    waits = [
        f"--amqp-{kind}-timeout-ms={WAIT_MS}"
        for kind in ("connect", "channel", "declare", "confirm", "rpc")
    ]
    daemon = make_node_daemon(
        *waits, "--fetch-wait-ms", "200", amqp=proxy.url(rabbit_node.amqp_url)
    )
    # What the freeze must make it say: the probe found the link dead and dropped it.
    daemon.expected_errors.append("does not answer (the broker did not answer a liveness probe")
    url = daemon.url
    pusher = Pusher(url)
    for _ in range(20):
        assert pusher.push("stall")[0] == 201
    pusher.start()
    _wait_for("pushes under way", lambda: len(pusher.results) > 30, 30)

    # When the broker stops answering (the proxy forwards nothing, closes nothing)
    proxy.freeze()
    frozen_at = time.monotonic()
    health: list[tuple[float, str, str]] = []
    while time.monotonic() - frozen_at < 4 * WAIT_MS / 1000 + 4:
        health.append(_health(url))
        time.sleep(0.1)

    # Then health says degraded, first with the stalled wait as its reason, and answers
    # within one broker wait
    said = [(status, reason) for _, status, reason in health]
    first_bad = next(i for i, (status, _) in enumerate(said) if status != "ok")
    assert all(status != "ok" for status, _ in said[first_bad:]), said
    stalled = [reason for status, reason in said if status == "degraded"]
    assert stalled and "did not answer" in stalled[0], f"no stall reported: {said[:5]}"
    slowest_health = max(took for took, _, _ in health)
    assert slowest_health < WAIT_MS / 1000 + SLACK_S, f"health took {slowest_health:.1f}s"
    # and the daemon treated the silent connection as lost (it is reconnecting)
    log_path = daemon.log_path
    assert log_path is not None
    _wait_for(
        "the silent connection dropped", lambda: "treating it as lost" in log_path.read_text(), 10
    )

    # When the broker answers again
    proxy.thaw()
    back_in = _wait_for(
        "health ok again",
        lambda: _health(url)[1] == "ok",
        60,
    )
    time.sleep(1.0)
    pusher.stop()

    # Then every push was answered 201 or 503, none past one wait's bound
    results = pusher.results
    statuses = {status for _, status, _, _ in results}
    assert statuses <= {201, 503}, statuses
    slowest = max(took for _, _, took, _ in results)
    assert slowest < WAIT_MS / 1000 + SLACK_S, f"a push took {slowest:.1f}s"
    refused = [r for r in results if r[1] == 503]
    assert refused, "no push was refused while the broker was frozen"
    # and every accepted job completes: none accepted was lost
    accepted = {job_id for job_id, status, _, _ in results if status == 201}
    queues = sorted({queue for _, _, _, queue in results})
    done: list[str] = []
    for queue in queues:
        done.extend(_drain(url, queue))
    lost = accepted - set(done)
    assert not lost, f"{len(lost)} accepted jobs never came back: {sorted(lost)[:5]}"
    assert set(done) <= {job_id for job_id, _, _, _ in results}, "jobs nobody pushed"
    for job_id in list(accepted)[:10]:
        status, body = request("GET", f"{url}/ojs/v1/jobs/{job_id}")
        assert (status, body["job"]["state"]) == (200, "completed"), body
    print(
        f"\nfrozen broker: {len(results)} pushes ({len(accepted)} accepted, {len(refused)} "
        f"refused), slowest push {slowest:.2f}s, slowest health {slowest_health:.2f}s, "
        f"healthy {back_in:.1f}s after the thaw"
    )


def test_a_memory_alarm_degrades_without_dropping_the_connection(
    rabbit_node: RabbitNode, make_node_daemon: Callable[..., Daemon]
) -> None:
    # Given a daemon on the private node, every wait bounded by 2 s
    waits = [
        f"--amqp-{kind}-timeout-ms={WAIT_MS}"
        for kind in ("connect", "channel", "declare", "confirm", "rpc")
    ]
    daemon = make_node_daemon(*waits, "--fetch-wait-ms", "200")
    url = daemon.url
    pusher = Pusher(url)
    assert pusher.push("alarm")[0] == 201

    # When the broker raises its memory alarm (it blocks every publishing connection)
    rabbit_node.ctl("set_vm_memory_high_watermark", "0.000001")
    try:
        statuses = [pusher.push("alarm") for _ in range(3)]
        _, health, reason = _health(url)
        log_path = daemon.log_path
        assert log_path is not None
        _wait_for(
            "the blocked connection noticed",
            lambda: "has blocked the connection" in log_path.read_text(),
            4 * WAIT_MS / 1000,
        )
    finally:
        rabbit_node.ctl("set_vm_memory_high_watermark", "0.4")

    # Then pushes were answered 503 within the confirm timeout, health said degraded with
    # the reason, and the connection was kept (reconnecting would be blocked the same way)
    assert all(s == 503 and took < WAIT_MS / 1000 + SLACK_S for s, took in statuses), statuses
    assert health == "degraded" and "did not answer" in reason, (health, reason)
    assert "treating it as lost" not in log_path.read_text()
    # and once the alarm clears, pushes are accepted again and every accepted job completes
    _wait_for("a push accepted again", lambda: pusher.push("alarm")[0] == 201, 30)
    accepted = {job_id for job_id, status, _, _ in pusher.results if status == 201}
    done = set(_drain(url, "alarm"))
    assert accepted <= done, f"accepted jobs never came back: {sorted(accepted - done)[:5]}"
    assert metric(url, "ojs_amqp_reconnections_total") == 0
