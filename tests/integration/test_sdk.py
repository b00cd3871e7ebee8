"""The Python SDK against a real RabbitMQ and a real daemon: produce and work over AMQP only,
check the outcome over HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ojs_amqp.amqp import pipe as pipe_module
from ojs_amqp.amqp import protocol
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.errors import Conflict, NotFound
from ojs_amqp.sdk import Client, JobContext, JobError, ReplyTimeout, Unroutable, Worker
from tests.daemon import AMQP_URL, RABBITMQCTL, Daemon, close_connections, request

pytestmark = pytest.mark.integration


def _queue() -> str:
    return f"sdk-{uuid.uuid4().hex[:8]}"


async def http_job(daemon: Daemon, job_id: str) -> tuple[int, Any]:
    return await asyncio.to_thread(request, "GET", f"{daemon.url}/ojs/v1/jobs/{job_id}")


async def wait_state(
    daemon: Daemon, job_id: str, states: set[str], within: float = 20.0
) -> dict[str, Any]:
    """Poll GET /ojs/v1/jobs/{id} until the job is in one of `states`; the job."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        status, body = await http_job(daemon, job_id)
        last = (status, body)
        if status == 200 and body["job"]["state"] in states:
            return dict(body["job"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}; last answer {last}")


async def until(check: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class Running:
    """A Worker running in this event loop, stopped (gracefully) at the end of the test."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.task = asyncio.create_task(worker.run(handle_signals=False))

    async def started(self) -> Worker:
        async with asyncio.timeout(15):
            while not self.worker.consuming.is_set():
                if self.task.done():
                    self.task.result()
                await asyncio.sleep(0.02)
        return self.worker

    async def close(self) -> None:
        await self.worker.stop(grace_period=1.0)
        await self.task


@pytest.fixture
async def client(module_daemon: Daemon) -> AsyncIterator[Client]:
    async with Client(AMQP_URL, prefix=module_daemon.prefix, timeout=5.0) as c:
        yield c


@pytest.fixture
async def start_worker(module_daemon: Daemon) -> AsyncIterator[Callable[..., Any]]:
    running: list[Running] = []

    async def start(queue: str, handlers: dict[str, Any], **options: Any) -> Worker:
        options.setdefault("concurrency", 4)
        worker = Worker(
            AMQP_URL, prefix=module_daemon.prefix, queues=[queue], handlers=handlers, **options
        )
        run = Running(worker)
        running.append(run)
        return await run.started()

    yield start
    for run in running:
        await run.close()


# --- produce and work ----------------------------------------------------------------------


async def test_sdk_push_then_sdk_worker_completes_and_http_shows_the_result(
    module_daemon: Daemon, client: Client, start_worker: Any
) -> None:
    queue = _queue()

    async def add(ctx: JobContext) -> dict[str, int]:
        return {"sum": sum(ctx.args), "attempt": ctx.attempt}

    job = await client.push("math.add", [1, 2, 3], queue=queue, meta={"who": "test"})
    assert job.state.value == "available" and job.queue == queue
    worker = await start_worker(queue, {"math.add": add})
    done = await wait_state(module_daemon, job.id, {"completed"})
    assert done["result"] == {"sum": 6, "attempt": 1}
    assert done["worker_id"] == worker.worker_id
    assert done["meta"] == {"who": "test"}
    # The worker counts a report once the broker confirms its publish, which can come after
    # the daemon has applied it.
    await until(lambda: worker.stats.completed == 1)
    info = await client.info(job.id)
    assert info.state.value == "completed" and info.result == {"sum": 6, "attempt": 1}


async def test_a_failing_handler_is_retried_per_policy_then_dead_lettered(
    module_daemon: Daemon, client: Client, start_worker: Any
) -> None:
    queue = _queue()
    calls: list[int] = []

    async def boom(ctx: JobContext) -> None:
        calls.append(ctx.attempt)
        raise ValueError(f"boom {ctx.attempt}")

    retry = {"max_attempts": 3, "initial_interval": "PT0.2S", "backoff_coefficient": 1.0,
             "jitter": False, "on_exhaustion": "dead_letter"}  # fmt: skip
    job = await client.push("sdk.boom", [], queue=queue, retry=retry)
    await start_worker(queue, {"sdk.boom": boom})
    final = await wait_state(module_daemon, job.id, {"discarded"}, within=30)
    assert calls == [1, 2, 3]
    assert final["attempt"] == 3
    assert final["error"]["code"] == "handler_error"
    assert final["error"]["message"] == "boom 3"
    assert [(e["type"], e["attempt"]) for e in final["errors"]] == [
        ("ValueError", 1), ("ValueError", 2), ("ValueError", 3)
    ]  # fmt: skip
    assert "boom" in final["error"]["details"]["traceback"]
    status, body = await asyncio.to_thread(
        request, "GET", f"{module_daemon.url}/ojs/v1/dead-letter?queue={queue}"
    )
    assert status == 200
    assert [j["id"] for j in body["jobs"]] == [job.id]


async def test_non_retryable_errors_and_unknown_types_fail_at_once(
    module_daemon: Daemon, client: Client, start_worker: Any
) -> None:
    queue = _queue()

    async def refuse(ctx: JobContext) -> None:
        raise JobError("no such mailbox", code="mailbox_missing", retryable=False)

    refused = await client.push("sdk.refuse", [], queue=queue, retry={"max_attempts": 5})
    unknown = await client.push("sdk.nobody", [], queue=queue, retry={"max_attempts": 1})
    await start_worker(queue, {"sdk.refuse": refuse})
    first = await wait_state(module_daemon, refused.id, {"discarded"})
    assert first["attempt"] == 1 and first["error"]["code"] == "mailbox_missing"
    second = await wait_state(module_daemon, unknown.id, {"discarded"})
    assert second["error"]["code"] == "unknown_type"


async def test_push_batch_and_threaded_handlers(
    module_daemon: Daemon, client: Client, start_worker: Any
) -> None:
    queue = _queue()
    seen: list[int] = []

    def square(ctx: JobContext) -> int:  # a plain function: runs in the thread pool
        time.sleep(0.01)
        seen.append(ctx.args[0])
        return int(ctx.args[0]) ** 2

    jobs = await client.push_batch(
        [{"type": "sdk.square", "args": [n], "queue": queue} for n in range(40)]
    )
    assert len({j.id for j in jobs}) == 40
    worker = await start_worker(queue, {"sdk.square": square})
    await until(lambda: worker.stats.completed == 40)
    assert sorted(seen) == list(range(40))
    last = await wait_state(module_daemon, jobs[-1].id, {"completed"})
    assert last["result"] == 39**2


async def test_many_jobs_complete_through_batched_reports_and_http_shows_each_result(
    module_daemon: Daemon, client: Client, start_worker: Any
) -> None:
    """Outcomes finished together go as `ojs.report.batch`es: every job is applied (adopted,
    then completed with its own result), and every delivery acked after its batch's
    confirm (nothing is left in the queue)."""
    queue = _queue()

    async def triple(ctx: JobContext) -> dict[str, int]:
        return {"n": ctx.args[0], "triple": 3 * ctx.args[0]}

    def fails(ctx: JobContext) -> None:
        raise JobError("no", code="nope", retryable=False)

    jobs = await client.push_batch(
        [{"type": "sdk.triple", "args": [n], "queue": queue} for n in range(300)]
    )
    failing = await client.push("sdk.fails", [], queue=queue, retry={"max_attempts": 1})
    worker = await start_worker(
        queue, {"sdk.triple": triple, "sdk.fails": fails}, concurrency=32, report_batch_ms=20
    )
    await until(lambda: worker.stats.completed == 300 and worker.stats.failed == 1, within=30)
    assert worker.stats.report_batches >= 1
    assert worker.stats.report_batches < 300  # shared, not one message per job
    assert worker.stats.report_failures == 0

    def all_results() -> dict[str, Any]:
        out = {}
        for job in jobs:
            status, body = request("GET", f"{module_daemon.url}/ojs/v1/jobs/{job.id}")
            assert status == 200, body
            out[job.id] = body["job"]
        return out

    deadline = time.monotonic() + 20
    while True:
        seen = await asyncio.to_thread(all_results)
        if all(j["state"] == "completed" for j in seen.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    for n, job in enumerate(jobs):
        assert seen[job.id]["state"] == "completed"
        assert seen[job.id]["result"] == {"n": n, "triple": 3 * n}
        assert seen[job.id]["worker_id"] == worker.worker_id
    discarded = await wait_state(module_daemon, failing.id, {"discarded"})
    assert discarded["error"]["code"] == "nope"
    assert await _ready_and_unacked(module_daemon, queue) == 0


async def _ready_and_unacked(daemon: Daemon, queue: str) -> int:
    """Messages in the job queue, ready or delivered but unacked (rabbitmqctl)."""
    name = Topology(daemon.prefix).job_queue(queue)
    out = await asyncio.to_thread(
        subprocess.run,
        [*RABBITMQCTL, "-q", "list_queues", "name", "messages"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == name:
            return int(fields[1])
    raise AssertionError(f"queue {name} not found")


async def test_the_first_heartbeat_lets_the_daemon_adopt_a_binding_push_job(
    module_daemon: Daemon, client: Client, start_worker: Any
) -> None:
    """A binding-PUSH job is unknown to the daemon until a worker says something about it:
    its first heartbeat carries the envelope, so the job shows active while it runs."""
    queue = _queue()
    release = asyncio.Event()

    async def wait(ctx: JobContext) -> str:
        await release.wait()
        return "done"

    job = await client.push("sdk.wait", [], queue=queue, meta={"k": "v"})
    status, _ = await http_job(module_daemon, job.id)
    assert status == 404  # binding PUSH: the daemon has not seen it yet
    worker = await start_worker(queue, {"sdk.wait": wait}, heartbeat_interval=0.2)
    active = await wait_state(module_daemon, job.id, {"active"})
    assert active["worker_id"] == worker.worker_id and active["meta"] == {"k": "v"}
    release.set()
    done = await wait_state(module_daemon, job.id, {"completed"})
    assert done["result"] == "done"


async def test_expired_jobs_are_dropped_without_running(client: Client, start_worker: Any) -> None:
    queue = _queue()
    ran: list[str] = []

    async def handle(ctx: JobContext) -> None:
        ran.append(ctx.id)

    expires = datetime.now(UTC) + timedelta(seconds=0.3)
    await client.push("sdk.late", [], queue=queue, expires_at=expires)
    fresh = await client.push("sdk.late", [], queue=queue)
    await asyncio.sleep(0.6)
    worker = await start_worker(queue, {"sdk.late": handle})
    await until(lambda: worker.stats.expired == 1 and worker.stats.completed == 1)
    assert ran == [fresh.id]


async def test_an_async_handler_past_its_timeout_is_interrupted_and_fails(
    module_daemon: Daemon, client: Client, start_worker: Any
) -> None:
    queue = _queue()

    async def slow(ctx: JobContext) -> None:
        await asyncio.sleep(30)

    job = await client.push("sdk.slow", [], queue=queue, timeout_ms=200, retry={"max_attempts": 1})
    worker = await start_worker(queue, {"sdk.slow": slow})
    final = await wait_state(module_daemon, job.id, {"discarded"})
    assert final["error"]["code"] == "timeout"
    await until(lambda: worker.stats.failed == 1)


async def test_the_public_aiormq_publish_path_works_too(
    module_daemon: Daemon, monkeypatch: pytest.MonkeyPatch, start_worker: Any
) -> None:
    """Without the aiormq internals the pipe uses, everything goes through basic_publish."""
    monkeypatch.setattr(pipe_module, "has_aiormq_internals", lambda channel: False)
    queue = _queue()

    async def double(ctx: JobContext) -> int:
        return int(ctx.args[0]) * 2

    async with Client(AMQP_URL, prefix=module_daemon.prefix) as c:
        jobs = await c.push_batch([{"type": "sdk.double", "args": [n], "queue": queue}
                                   for n in range(20)])  # fmt: skip
        later = await c.push("sdk.double", [21], queue=queue, delay=0.2)
        assert c._pipe is not None and not c._pipe.fast
        worker = await start_worker(queue, {"sdk.double": double})
        await until(lambda: worker.stats.completed == 21)
        done = await wait_state(module_daemon, later.id, {"completed"})
        assert done["result"] == 42
        assert (await c.info(jobs[3].id)).result == 6


# --- scheduling, RPC and cancellation ------------------------------------------------------


async def test_a_scheduled_push_goes_through_the_daemon_and_runs_on_time(
    module_daemon: Daemon, client: Client, start_worker: Any
) -> None:
    queue = _queue()
    ran_at: list[float] = []

    async def handle(ctx: JobContext) -> str:
        ran_at.append(time.time())
        return "on time"

    job = await client.push("sdk.later", [], queue=queue, delay=1.0)
    assert job.state.value == "scheduled"  # the daemon's answer, not a local guess
    assert job.scheduled_at_ms is not None
    assert (await client.info(job.id)).state.value == "scheduled"
    await start_worker(queue, {"sdk.later": handle})
    done = await wait_state(module_daemon, job.id, {"completed"})
    assert done["result"] == "on time"
    assert ran_at[0] * 1000 >= job.scheduled_at_ms


async def test_info_and_cancel_rpcs_map_errors_like_http(client: Client) -> None:
    queue = _queue()
    job = await client.push("sdk.later", [], queue=queue, delay=60)
    cancelled = await client.cancel(job.id)
    assert cancelled.id == job.id and cancelled.state.value == "cancelled"
    assert (await client.info(job.id)).state.value == "cancelled"
    with pytest.raises(Conflict):
        await client.cancel(job.id)
    with pytest.raises(NotFound):
        await client.info("019a0000-0000-7000-8000-00000000beef")
    pending = await client.push("sdk.later", [], queue=queue, pending=True)
    assert pending.state.value == "pending"


async def test_cancelling_a_running_job_interrupts_its_handler(
    module_daemon: Daemon, client: Client, start_worker: Any
) -> None:
    queue = _queue()
    started = asyncio.Event()
    interrupted = asyncio.Event()

    async def long(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            interrupted.set()
            raise

    worker = await start_worker(queue, {"sdk.long": long}, heartbeat_interval=0.2)
    job = await client.push("sdk.long", [], queue=queue, delay=0.1)  # stored by the daemon
    await asyncio.wait_for(started.wait(), 15)
    active = await wait_state(module_daemon, job.id, {"active"})  # heartbeats
    assert active["worker_id"] == worker.worker_id
    await client.cancel(job.id)
    await asyncio.wait_for(interrupted.wait(), 10)
    await until(lambda: worker.stats.cancelled == 1)
    assert (await wait_state(module_daemon, job.id, {"cancelled"}))["state"] == "cancelled"
    assert worker.stats.completed == worker.stats.failed == 0


# --- failure modes -------------------------------------------------------------------------


async def test_worker_and_client_reconnect_after_the_broker_drops_them(
    module_daemon: Daemon, start_worker: Any
) -> None:
    queue, name = _queue(), f"sdk-test-{uuid.uuid4().hex[:8]}"

    async def echo(ctx: JobContext) -> Any:
        return ctx.args[0]

    worker = await start_worker(queue, {"sdk.echo": echo}, connection_name=name)
    async with Client(AMQP_URL, prefix=module_daemon.prefix, connection_name=name) as c:
        first = await c.push("sdk.echo", [1], queue=queue)
        await wait_state(module_daemon, first.id, {"completed"})
        assert await asyncio.to_thread(close_connections, name) == 2
        await asyncio.sleep(0.2)
        second = await c.push("sdk.echo", [2], queue=queue)  # the client reconnects
        done = await wait_state(module_daemon, second.id, {"completed"})
    assert done["result"] == 2
    assert worker.stats.reconnections == 1


async def test_a_refused_batch_hands_every_covered_delivery_back(
    module_daemon: Daemon, client: Client, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch the broker returns (mandatory publish, nothing bound to its routing key) is
    not confirmed: none of the deliveries it covers is acked; each is handed back and runs
    again. Once reports can be routed, every job completes."""
    queue = _queue()
    runs: dict[str, int] = {}
    kinds: list[str] = []
    real_send = Worker._send_reports

    def recording_send(
        self: Worker, pipe: Any, key: str, body: bytes, kind: str, done: Any
    ) -> None:
        kinds.append(kind)
        real_send(self, pipe, key, body, kind, done)

    monkeypatch.setattr(Worker, "_send_reports", recording_send)

    async def count(ctx: JobContext) -> int:
        runs[ctx.id] = runs.get(ctx.id, 0) + 1
        return runs[ctx.id]

    jobs = await client.push_batch(
        [{"type": "sdk.count", "args": [], "queue": queue} for _ in range(10)]
    )
    worker = Worker(
        AMQP_URL, prefix=module_daemon.prefix, queues=[queue], handlers={"sdk.count": count},
        concurrency=10, report_batch_ms=300,
    )  # fmt: skip
    good_key = worker._report_keys[queue]
    worker._report_keys[queue] = f"control.{queue}-nowhere"  # unroutable: the broker returns it
    run = Running(worker)
    try:
        await run.started()
        await until(lambda: worker.stats.report_failures >= 10)
        assert kinds[0] == protocol.BATCH  # all ten finished within one window
        assert worker.stats.completed == 0
        # Handed back, not acked: every job is delivered and runs again.
        await until(lambda: len(runs) == 10 and min(runs.values()) >= 2)
        for job in jobs:
            status, _ = await http_job(module_daemon, job.id)
            assert status == 404  # no report ever reached the daemon
        worker._report_keys[queue] = good_key
        await until(lambda: worker.stats.completed == 10, within=30)
    finally:
        await run.close()
    for job in jobs:
        done = await wait_state(module_daemon, job.id, {"completed"})
        assert done["result"] == runs[job.id] >= 2
    assert await _ready_and_unacked(module_daemon, queue) == 0


async def test_a_prefix_no_daemon_uses_is_reported_as_unroutable(broker: str) -> None:
    async with Client(broker, prefix=f"nodaemon-{uuid.uuid4().hex[:6]}", timeout=3) as c:
        with pytest.raises(Unroutable, match="check --prefix"):
            await c.push("sdk.x", [])
        with pytest.raises(Unroutable):
            await c.info("019a0000-0000-7000-8000-00000000beef")


async def test_an_rpc_times_out_when_the_daemon_is_gone(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    daemon.stop()  # its queues stay: requests are routed, nobody answers
    async with Client(AMQP_URL, prefix=daemon.prefix, timeout=0.5) as c:
        with pytest.raises(ReplyTimeout):
            await c.info("019a0000-0000-7000-8000-00000000beef")


# --- the CLI worker ------------------------------------------------------------------------


def _cli(daemon: Daemon, queue: str, target: str, *flags: str) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "ojs_amqp", "worker", target, "--queue", queue,
        "--prefix", daemon.prefix, "--amqp-url", AMQP_URL, "--concurrency", "2", *flags,
    ]  # fmt: skip
    return subprocess.Popen(
        args, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def _started(marker: Path, proc: subprocess.Popen[bytes], within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(marker.exists):
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"the handler never started; worker output:\n{out}")
        await asyncio.sleep(0.05)


def _finish(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the worker did not exit in time:\n{out.decode()}") from None
    return proc.returncode, out.decode()


async def test_cli_worker_finishes_the_running_job_on_sigterm(
    module_daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    queue = _queue()
    marker = tmp_path / "started"
    job = await client.push("sdk.slow", [str(marker), 1.5], queue=queue)
    proc = _cli(module_daemon, queue, "tests.integration.sdk_handlers:worker")
    await _started(marker, proc)
    proc.send_signal(signal.SIGTERM)
    code, out = await asyncio.to_thread(_finish, proc, 15)
    assert code == 0, out
    done = await wait_state(module_daemon, job.id, {"completed"})
    assert done["result"] == {"slept": 1.5}


async def test_cli_worker_gives_unfinished_jobs_back_after_the_grace_period(
    module_daemon: Daemon, client: Client, tmp_path: Path, start_worker: Any
) -> None:
    queue = _queue()
    marker = tmp_path / "started"
    job = await client.push("sdk.slow", [str(marker), 60], queue=queue, delay=0.1)
    proc = _cli(
        module_daemon, queue, "tests.integration.sdk_handlers:handlers", "--grace-period", "0.5"
    )
    await _started(marker, proc)
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, out = await asyncio.to_thread(_finish, proc, 15)
    assert code == 0, out
    assert time.monotonic() - began < 10
    # The delivery went back to the queue: another worker gets it. The job was running when
    # its worker let go of it, so that attempt counts as lost (ojs-worker-protocol: jobs left
    # at shutdown are failed, and retried).
    attempts: list[int] = []

    async def quick(ctx: JobContext) -> str:
        attempts.append(ctx.attempt)
        return "second worker"

    await start_worker(queue, {"sdk.slow": quick})
    done = await wait_state(module_daemon, job.id, {"completed"})
    assert done["result"] == "second worker"
    assert attempts == [2]
    assert [(e["code"], e["attempt"]) for e in done["errors"]] == [("worker_lost", 1)]


async def test_cli_worker_stops_at_once_on_a_second_sigint_even_with_threads(
    module_daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    queue = _queue()
    marker = tmp_path / "started"
    await client.push("sdk.slow-thread", [str(marker), 60], queue=queue)
    proc = _cli(module_daemon, queue, "tests.integration.sdk_handlers:handlers")
    await _started(marker, proc)
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    code, out = await asyncio.to_thread(_finish, proc, 15)
    assert code == 130, out
    assert time.monotonic() - began < 10
