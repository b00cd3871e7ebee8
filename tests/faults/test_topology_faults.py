"""Someone else changes the daemon's topology under it, mid-workload.

- A job queue is deleted while the daemon consumes it: the broker sends Basic.Cancel; the
  daemon says so in its log, declares the queue again, consumes again, and republishes from
  its store every job that was waiting in the lost queue, so none is stranded.
- The exchange job copies are published to is deleted: the next publish closes the daemon's
  publishing channel; the daemon opens it again, declares its topology again (the exchange,
  and every queue's binding to it), and the workload finishes whole.
- A queue the daemon needs exists with other arguments (declared by someone else before the
  daemon first uses it, or while it runs): the declare fails with 406 PRECONDITION_FAILED;
  the daemon answers the requests that need that queue with a clear error and keeps serving
  every other queue, and still starts after a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aio_pika

from ojs_amqp.amqp.topology import Topology
from tests.daemon import Daemon, request
from tests.faults.scenario import CI, PUBLISHES, STALL_S, seeded, workload
from tests.rabbit_node import RabbitNode
from tests.workload import KINDS


async def _delete_queue(amqp_url: str, name: str) -> int:
    """Delete a queue as an operator would; returns how many ready messages went with it."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        result = await channel.queue_delete(name)
        return int(result.message_count or 0)


async def _declare_conflicting(amqp_url: str, name: str) -> None:
    """A classic queue where the daemon would declare a quorum one."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "classic"})


def _wait_for_log(daemon: Daemon, *texts: str, deadline_s: float = 15.0) -> str:
    """The daemon's log once it has any of `texts`."""
    assert daemon.log_path is not None
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        log = daemon.log_path.read_text()
        if any(text in log for text in texts):
            return log
        time.sleep(0.1)
    raise AssertionError(f"the daemon never logged any of {texts!r}")


def test_job_queue_deleted_under_the_consumer(
    rabbit_node: RabbitNode, make_node_daemon: Callable[..., Daemon]
) -> None:
    # Given a backlog: a slow worker and a small prefetch, so most waiting jobs sit in the
    # broker's queue rather than in the daemon's buffer
    rng = seeded("queue deleted")
    daemon = make_node_daemon("--prefetch", "10")
    run = workload(daemon.url, CI, rng, push_interval_s=0.004, workers=1, work_s=0.03).start()
    started = time.monotonic()
    run.wait_for("40% of the pushes", lambda: run.pushed() >= CI.jobs * 0.4)

    # When an operator deletes the job queue, with ready messages in it
    name = Topology(daemon.prefix).job_queue(run.queue)
    deleted = asyncio.run(_delete_queue(rabbit_node.amqp_url, name))
    with run.lock:
        waiting = run.accepted - set(run.fetches)  # pushed, not yet handed to a worker
    assert deleted > 0, "the queue had no ready message: the republish path was not tested"

    # Then the daemon reports the cancelled consumer and consumes the re-declared queue
    # (RabbitMQ 3.10 may also close the publishing connection with 541 INTERNAL_ERROR when a
    # publish races the deletion: then the reconnect restores the consumer)
    _wait_for_log(daemon, f"the broker cancelled the consumer of queue {name}")
    _wait_for_log(daemon, f"consuming queue {name} again", "reconnected to the broker")
    # and republishes from its store the jobs that were waiting in it
    # (the engine names the OJS queue: it knows no broker queue names)
    lost = f"queue {run.queue} was lost on the broker: republished"
    log = _wait_for_log(daemon, lost)
    republished = int(log.split(f"{lost} ")[1].split()[0])
    assert republished >= deleted, f"{deleted} ready messages deleted, {republished} republished"
    ledger = run.finish(CI.deadline_s, STALL_S)
    # and those end as their kind says, like every other job
    ended = {i: ledger.states()[i] for i in waiting}
    assert all(s == KINDS[run.plan[i]].final_state for i, s in ended.items()), ended
    print(
        ledger.line(
            "queue deleted [ci]", time.monotonic() - started, ready_messages_deleted=deleted
        )
    )
    ledger.check(unavailable_ok=PUBLISHES)


def _push(api: str, queue: str) -> tuple[int, Any]:
    return request("POST", f"{api}/jobs", {"type": "x", "args": [], "options": {"queue": queue}})


def _error_of(answer: tuple[int, Any]) -> str:
    status, body = answer
    assert status == 500, f"expected a clear 500, got {status} {body}"
    assert body["error"]["code"] == "backend_error", body
    return str(body["error"]["message"])


def test_precondition_failed_on_one_queue_leaves_the_others_working(
    rabbit_node: RabbitNode, make_node_daemon: Callable[..., Daemon]
) -> None:
    # Given a queue declared with other arguments before the daemon starts
    daemon = make_node_daemon(start=False)
    daemon.expected_errors.append("already exists with different arguments")
    topology = Topology(daemon.prefix)
    asyncio.run(_declare_conflicting(rabbit_node.amqp_url, topology.job_queue("before")))
    daemon.start()
    rng = seeded("precondition failed")
    run = workload(daemon.url, CI, rng).start()
    started = time.monotonic()
    run.wait_for("a third of the pushes", lambda: run.pushed() >= CI.jobs // 3)
    # ... and another one declared while the daemon runs
    asyncio.run(_declare_conflicting(rabbit_node.amqp_url, topology.job_queue("during")))

    # When clients use those queues, while the workload goes on in its own queue
    api = f"{daemon.url}/ojs/v1"
    errors = [
        _error_of(_push(api, "before")),
        _error_of(request("POST", f"{api}/workers/fetch", {"queues": ["during"]})),
        _error_of(_push(api, "during")),
    ]

    # Then each is refused with a message that names the queue and the cause
    for error, queue in zip(errors, ("before", "during", "during"), strict=True):
        assert topology.job_queue(queue) in error and "different arguments" in error, error
    # and the daemon logs it, naming the queue
    assert daemon.log_path is not None
    logged = [
        line for line in daemon.log_path.read_text().splitlines()
        if " ERROR " in line and "different arguments" in line
    ]  # fmt: skip
    for queue in ("before", "during"):
        assert any(topology.job_queue(queue) in line for line in logged), logged
    # and every other queue keeps working: the workload's ledger is whole
    ledger = run.finish(CI.deadline_s, STALL_S)
    print(ledger.line("precondition failed [ci]", time.monotonic() - started))
    ledger.check()
    assert request("GET", f"{api}/health")[0] == 200
    # and the daemon starts again afterwards (nothing it recorded replays into the 406)
    daemon.stop()
    daemon.start()
    status, body = _push(api, "after")
    assert status == 201, body


async def _delete_exchange(amqp_url: str, name: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)


def test_job_exchange_deleted_under_the_publisher(
    rabbit_node: RabbitNode, make_node_daemon: Callable[..., Daemon]
) -> None:
    # Given a workload going through the daemon
    rng = seeded("exchange deleted")
    daemon = make_node_daemon()
    run = workload(daemon.url, CI, rng, push_interval_s=0.004).start()
    started = time.monotonic()
    run.wait_for("40% of the pushes", lambda: run.pushed() >= CI.jobs * 0.4)

    # When an operator deletes the exchange every job copy is published to (its bindings to
    # the job queues go with it)
    asyncio.run(_delete_exchange(rabbit_node.amqp_url, Topology(daemon.prefix).direct_exchange))

    # Then the next publish closes the daemon's publishing channel; the daemon says so,
    # opens it again, declares the exchange and binds every queue again, and the workload
    # finishes whole (pushes refused meanwhile got 503 and were retried by the clients)
    _wait_for_log(daemon, "the broker closed the publishing channel")
    _wait_for_log(daemon, "publishing again")
    ledger = run.finish(CI.deadline_s, STALL_S)
    print(ledger.line("exchange deleted [ci]", time.monotonic() - started))
    ledger.check(unavailable_ok=PUBLISHES)
