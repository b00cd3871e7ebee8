"""Interoperability with a Node.js producer and worker in plain amqplib
(tests/interop/node/), combined with HTTP, pika and the Python SDK on the same queues.

The Node scripts need `node` and `npm ci --prefix tests/interop/node` (.ci/run does it); the
tests fail, not skip, without them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ojs_amqp.sdk import Client, JobContext, Worker
from tests.daemon import AMQP_URL, Daemon
from tests.interop.checks import http_job, http_push, new_queue, wait_states
from tests.interop.pika_clients import PikaClient, PikaWorker

pytestmark = pytest.mark.integration

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary; a failure (not a skip) when it or amqplib is missing."""
    binary = shutil.which("node")
    if binary is None:
        pytest.fail("node is not installed: the Node.js interop tests need Node.js 18+")
    if not (NODE_DIR / "node_modules" / "amqplib").is_dir():
        pytest.fail("amqplib is not installed: run `npm ci --prefix tests/interop/node`")
    return binary


def node_args(node: str, daemon: Daemon, script: str, queue: str, *args: str) -> list[str]:
    return [
        node, str(NODE_DIR / script), *args,
        "--url", AMQP_URL, "--prefix", daemon.prefix, "--queue", queue,
    ]  # fmt: skip


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def run_node(
    node: str, daemon: Daemon, script: str, queue: str, *args: str, ok: bool = True
) -> list[dict[str, Any]]:
    """Run a script to its end; its JSON-lines output (asserting it exited 0 if `ok`)."""
    done = subprocess.run(
        node_args(node, daemon, script, queue, *args), capture_output=True, text=True, timeout=40
    )
    assert (done.returncode == 0) == ok, (done.returncode, done.stdout, done.stderr)
    return events(done.stdout)


class NodeWorker:
    """worker.js running in the background until it has completed `count` jobs."""

    def __init__(self, node: str, daemon: Daemon, queue: str, count: int, *args: str) -> None:
        self.process = subprocess.Popen(
            node_args(node, daemon, "worker.js", queue, "--count", str(count), *args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def finish(self, timeout: float = 40) -> list[dict[str, Any]]:
        stdout, stderr = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, (self.process.returncode, stdout, stderr)
        return events(stdout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def node_workers() -> Iterator[list[NodeWorker]]:
    """Node workers a test started; any still running at the end are killed."""
    started: list[NodeWorker] = []
    yield started
    for worker in started:
        worker.kill()


def completed_ids(output: list[dict[str, Any]]) -> list[str]:
    return [e["job_id"] for e in output if e["event"] == "completed"]


# --- Node on its own, and with HTTP --------------------------------------------------------


def test_http_push_then_the_node_worker_completes_with_its_result_visible_over_http(
    interop_daemon: Daemon, node: str
) -> None:
    queue = new_queue("http-node")
    ids = [http_push(interop_daemon, queue, "math.add", [n, 1, 2]) for n in range(3)]
    output = run_node(node, interop_daemon, "worker.js", queue, "--count", "3")
    assert sorted(completed_ids(output)) == sorted(ids)
    jobs = wait_states(interop_daemon, ids, "completed")
    for n, job_id in enumerate(ids):
        job = jobs[job_id]
        assert job["result"] == {"sum": n + 3, "handled_by": "node", "attempt": 1}
        assert job["attempt"] == 1 and job["worker_id"].startswith("node-")


def test_the_node_producer_submits_plain_envelopes_and_gets_the_accepted_jobs_back(
    interop_daemon: Daemon, node: str
) -> None:
    queue = new_queue("node-submit")
    output = run_node(node, interop_daemon, "producer.js", queue, "submit", "--count", "2",
                      "--type", "report.build", "--args", "[2026]")  # fmt: skip
    assert [e["event"] for e in output] == ["accepted", "accepted"]
    accepted = [e["job"] for e in output]
    for job in accepted:
        # The daemon validated the envelope, filled the system fields, took the queue from
        # the routing key, and answered through direct reply-to
        assert job["queue"] == queue and job["type"] == "report.build" and job["args"] == [2026]
        assert job["state"] == "available" and job["id"] and job["created_at"]
        assert http_job(interop_daemon, job["id"])["state"] == "available"
    # An invalid envelope is answered with the OJS error, and the script says so
    refused = run_node(node, interop_daemon, "producer.js", queue, "submit", "--args", '"x"',
                       ok=False)  # fmt: skip
    assert refused[0]["event"] == "refused"
    assert refused[0]["error"]["code"] == "invalid_request"
    # The accepted jobs are real jobs: the Node worker runs them
    output = run_node(node, interop_daemon, "worker.js", queue, "--count", "2")
    ids = [job["id"] for job in accepted]
    assert sorted(completed_ids(output)) == sorted(ids)
    wait_states(interop_daemon, ids, "completed")


# --- Node with pika ---------------------------------------------------------------------------


def test_node_binding_push_then_the_pika_worker_completes_and_http_shows_it(
    interop_daemon: Daemon, node: str
) -> None:
    queue = new_queue("node-pika")
    output = run_node(node, interop_daemon, "producer.js", queue, "push", "--count", "4",
                      "--type", "math.double")  # fmt: skip
    ids = [e["job_id"] for e in output if e["event"] == "pushed"]
    assert len(ids) == 4

    def double(job: dict[str, Any], _: int) -> int:
        return int(job["args"][0]) * 2

    with PikaWorker(AMQP_URL, interop_daemon.prefix, queue, double, worker_id="pika-3"):
        jobs = wait_states(interop_daemon, ids, "completed")
    for n, job_id in enumerate(ids):
        assert jobs[job_id]["result"] == n * 2
        assert jobs[job_id]["type"] == "math.double" and jobs[job_id]["id"] == job_id


def test_pika_push_then_the_node_worker_fails_once_and_succeeds_on_the_daemons_retry(
    interop_daemon: Daemon, node: str, node_workers: list[NodeWorker]
) -> None:
    queue = new_queue("pika-node")
    retry = {"max_attempts": 3, "initial_interval": "PT0.1S", "jitter": False}
    worker = NodeWorker(node, interop_daemon, queue, 2, "--fail-attempts", "1")
    node_workers.append(worker)
    with PikaClient(AMQP_URL, interop_daemon.prefix) as producer:
        producer.declare_queue(queue)
        ids = [producer.push(queue, "flaky.job", [n], retry=retry) for n in range(2)]
        output = worker.finish()
        # The worker failed attempt 1 of each job, and completed attempt 2 the daemon sent
        runs = sorted((e["job_id"], e["event"], e["attempt"]) for e in output)
        assert runs == sorted([(i, "failed", 1) for i in ids] + [(i, "completed", 2) for i in ids])
        jobs = wait_states(interop_daemon, ids, "completed")
        for job_id in ids:
            job = jobs[job_id]
            assert job["attempt"] == 2
            assert job["result"]["attempt"] == 2 and job["result"]["handled_by"] == "node"
            assert [(e["code"], e["attempt"]) for e in job["errors"]] == [("flaky", 1)]
            assert producer.info(job_id)["attempt"] == 2


# --- Node with the Python SDK -----------------------------------------------------------------


async def test_sdk_push_then_the_node_worker_completes(interop_daemon: Daemon, node: str) -> None:
    queue = new_queue("sdk-node")
    async with Client(AMQP_URL, prefix=interop_daemon.prefix, timeout=5.0) as client:
        pushed = [await client.push("math.add", [n, 5], queue=queue) for n in range(3)]
        ids = [job.id for job in pushed]
        output = await asyncio.to_thread(
            run_node, node, interop_daemon, "worker.js", queue, "--count", "3"
        )
        assert sorted(completed_ids(output)) == sorted(ids)
        jobs = await asyncio.to_thread(wait_states, interop_daemon, ids, "completed")
        for n, job_id in enumerate(ids):
            assert jobs[job_id]["result"] == {"sum": n + 5, "handled_by": "node", "attempt": 1}
            info = await client.info(job_id)
            assert info.state.value == "completed" and info.result == jobs[job_id]["result"]


async def test_node_binding_push_then_the_sdk_worker_completes(
    interop_daemon: Daemon, node: str
) -> None:
    queue = new_queue("node-sdk")
    output = await asyncio.to_thread(
        run_node, node, interop_daemon, "producer.js", queue, "push", "--count", "3",
        "--type", "math.square",
    )  # fmt: skip
    ids = [e["job_id"] for e in output if e["event"] == "pushed"]
    assert len(set(ids)) == 3, f"the producer should report three pushes: {output}"

    async def square(ctx: JobContext) -> dict[str, int]:
        return {"square": ctx.args[0] ** 2, "attempt": ctx.attempt}

    worker = Worker(AMQP_URL, prefix=interop_daemon.prefix, queues=[queue],
                    handlers={"math.square": square}, worker_id="sdk-1")  # fmt: skip
    running = asyncio.create_task(worker.run(handle_signals=False))
    try:
        jobs = await asyncio.to_thread(wait_states, interop_daemon, ids, "completed")
    finally:
        await worker.stop(grace_period=1.0)
        await running
    for n, job_id in enumerate(ids):
        assert jobs[job_id]["result"] == {"square": n * n, "attempt": 1}
        assert jobs[job_id]["worker_id"] == "sdk-1"
