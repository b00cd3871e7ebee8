"""The native AMQP binding as any AMQP client sees it: what RabbitMQ holds, what the daemon
answers. Plain aio-pika here (no SDK), following docs/amqp-protocol.md."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pamqp.commands import Basic

from ojs_amqp.amqp import protocol
from ojs_amqp.amqp.broker import Broker
from ojs_amqp.amqp.codec import Outgoing
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.errors import BackendUnavailable
from tests.daemon import AMQP_URL, RABBITMQCTL, Daemon, request, shared_daemon

pytestmark = pytest.mark.integration

IDLE_MS = 500


@pytest.fixture(scope="module")
def native_daemon(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("native")
    prefix = f"nat{uuid.uuid4().hex[:10]}"
    with shared_daemon(tmp, prefix, "--gateway-idle-ms", str(IDLE_MS)) as daemon:
        yield daemon


class Client:
    """A bare AMQP client: publish with confirms, RPC through direct reply-to."""

    def __init__(self, channel: AbstractChannel, topology: Topology) -> None:
        self.channel = channel
        self.t = topology
        self._replies: dict[str, asyncio.Future[Any]] = {}

    async def start(self) -> None:
        reply_queue = await self.channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await reply_queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._replies.pop(message.correlation_id or "", None)
        if future is not None:
            assert message.type == protocol.REPLY
            future.set_result(json.loads(message.body))

    async def publish(
        self, exchange: str, key: str, body: Any, *, rpc: bool = False, **props: Any
    ) -> Any:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        future: asyncio.Future[Any] | None = None
        if rpc:
            correlation = uuid.uuid4().hex
            future = asyncio.get_running_loop().create_future()
            self._replies[correlation] = future
            props |= {"reply_to": "amq.rabbitmq.reply-to", "correlation_id": correlation}
        message = aio_pika.Message(raw, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **props)
        target = (
            self.channel.default_exchange
            if exchange == ""
            else await self.channel.get_exchange(exchange, ensure=False)
        )
        await target.publish(message, routing_key=key, mandatory=True)
        return await asyncio.wait_for(future, 10) if future is not None else None

    async def control(self, kind: str, body: Any, *, queue: str | None = None) -> Any:
        """An RPC to a queue's control queue, or to ojs.control."""
        if queue is None:
            return await self.publish("", self.t.global_control_queue, body, rpc=True, type=kind)
        return await self.publish(
            self.t.direct_exchange, f"control.{queue}", body, rpc=True, type=kind
        )

    async def job_queue(self, queue: str) -> AbstractQueue:
        return await self.channel.get_queue(self.t.job_queue(queue), ensure=False)


@pytest.fixture
async def client(native_daemon: Daemon) -> AsyncIterator[Client]:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        c = Client(channel, Topology(native_daemon.prefix))
        await c.start()
        yield c


def _queue() -> str:
    return f"q{uuid.uuid4().hex[:8]}"


def _push(daemon: Daemon, queue: str, **extra: Any) -> dict[str, Any]:
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/jobs", {"type": "native.test", "args": [1], "queue": queue,
                                             **extra},
    )  # fmt: skip
    assert status == 201, body
    job: dict[str, Any] = body["job"]
    return job


def _job(daemon: Daemon, job_id: str) -> dict[str, Any]:
    status, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{job_id}")
    assert status == 200, body
    job: dict[str, Any] = body["job"]
    return job


async def _until(daemon: Daemon, job_id: str, state: str, within: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        status, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{job_id}")
        if status == 200 and body["job"]["state"] == state:
            job: dict[str, Any] = body["job"]
            return job
        assert time.monotonic() < deadline, f"{job_id} never became {state}: {body}"
        await asyncio.sleep(0.05)


async def _get(queue: AbstractQueue, within: float = 10) -> AbstractIncomingMessage:
    deadline = time.monotonic() + within
    while True:
        message = await queue.get(no_ack=False, fail=False)
        if message is not None:
            return message
        assert time.monotonic() < deadline, f"nothing arrived in {queue.name}"
        await asyncio.sleep(0.05)


async def _taken(
    daemon: Daemon, client: Client
) -> tuple[str, dict[str, Any], AbstractIncomingMessage]:
    """A job pushed over HTTP to a new queue, and its message as a native worker receives it."""
    queue = _queue()
    job = _push(daemon, queue)
    return queue, job, await _get(await client.job_queue(queue))


def _report(kind: str, message: AbstractIncomingMessage, **fields: Any) -> dict[str, Any]:
    envelope = json.loads(message.body)
    headers = message.headers or {}
    return {"job_id": envelope["id"], "worker_id": "w-test", "copy": headers.get("x-ojs-copy"),
            "job": envelope, **fields}  # fmt: skip


def _ctl_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [*RABBITMQCTL, "-q", *args, "--formatter", "json"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(out)
    for row in rows:  # rabbitmqctl lists arguments as [name, type, value] triples
        if isinstance(row.get("arguments"), list):
            row["arguments"] = {arg[0]: arg[-1] for arg in row["arguments"]}
    return rows


# --- what RabbitMQ holds ---------------------------------------------------------------------


async def test_the_broker_holds_the_declared_topology_with_the_binding_arguments(
    native_daemon: Daemon, client: Client
) -> None:
    # Given a queue announced with hello
    queue = _queue()
    answer = await client.control(protocol.HELLO, {"queues": [queue]})
    assert answer == {"queues": [queue]}
    t = client.t
    # Then RabbitMQ itself reports every queue durable, not exclusive, not auto-delete, with
    # exactly the arguments of the protocol document (AMQP-003/004/029/032)
    queues = {
        q["name"]: q
        for q in _ctl_json("list_queues", "name", "arguments", "durable", "exclusive",
                           "auto_delete")
        if q["name"].startswith(t.prefix + ".")
    }  # fmt: skip
    job_queue = queues[t.job_queue(queue)]
    assert job_queue["durable"] and not job_queue["exclusive"] and not job_queue["auto_delete"]
    assert job_queue["arguments"] == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": t.dlx_exchange,
        "x-dead-letter-routing-key": queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert queues[t.dead_letter_queue(queue)]["arguments"] == {"x-queue-type": "quorum"}
    assert queues[t.control_queue(queue)]["arguments"] == {"x-queue-type": "classic"}
    for spec in [*t.fixed_queues(), *t.queues_of(queue)]:
        assert queues[spec.name]["arguments"] == spec.arguments
        assert queues[spec.name]["durable"]
    # and the exchanges are durable, of the documented types (AMQP-001/002)
    exchanges = {
        e["name"]: e
        for e in _ctl_json("list_exchanges", "name", "type", "durable")
        if e["name"].startswith(t.prefix + ".")
    }
    assert exchanges[t.direct_exchange]["type"] == "direct"
    assert exchanges[t.dlx_exchange]["type"] == "direct"
    assert exchanges[t.retry_exchange]["type"] == "topic"
    assert exchanges[t.submit_exchange]["type"] == "fanout"
    assert all(e["durable"] for e in exchanges.values())
    # and the bindings route by queue name (AMQP-005) and control.{q}
    bindings = {
        (b["source_name"], b["routing_key"]): b["destination_name"]
        for b in _ctl_json("list_bindings", "source_name", "routing_key", "destination_name")
    }
    assert bindings[(t.direct_exchange, queue)] == t.job_queue(queue)
    assert bindings[(t.dlx_exchange, queue)] == t.dead_letter_queue(queue)
    assert bindings[(t.direct_exchange, f"control.{queue}")] == t.control_queue(queue)


async def test_a_pushed_job_sits_in_its_queue_with_the_binding_properties_and_headers(
    native_daemon: Daemon, client: Client
) -> None:
    queue = _queue()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    job = _push(native_daemon, queue, priority=10, meta={"traceparent": traceparent})
    # When a plain consumer takes the message RabbitMQ holds (no HTTP worker fetched, so the
    # daemon does not consume the queue)
    message = await _get(await client.job_queue(queue))
    # Then its properties follow AMQP-010…013 and §6.2
    assert message.content_type == "application/openjobspec+json"
    assert message.content_encoding == "utf-8"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == job["id"]
    assert message.type == "native.test"
    assert message.app_id == "ojs"
    assert message.priority == 8
    assert message.timestamp is not None
    assert abs(message.timestamp.timestamp() - time.time()) < 60
    headers = message.headers or {}
    assert headers["x-ojs-queue"] == queue
    assert headers["x-ojs-attempt"] == 1 and isinstance(headers["x-ojs-attempt"], int)
    assert headers["x-ojs-max-attempts"] == job["max_attempts"]
    assert headers["x-ojs-created-at"] == job["created_at"]
    assert headers["x-ojs-enqueued-at"] == job["enqueued_at"]
    assert headers["x-ojs-trace-id"] == traceparent
    # and the body is the envelope, UTF-8 JSON
    assert json.loads(message.body.decode("utf-8"))["id"] == job["id"]
    await message.reject(requeue=True)


# --- producing -------------------------------------------------------------------------------


async def test_a_binding_push_from_any_client_is_adopted_when_a_worker_reports(
    native_daemon: Daemon, client: Client
) -> None:
    queue = _queue()
    await client.control(protocol.HELLO, {"queues": [queue]})
    # Given a job published straight to ojs.exchange.direct with a non-UUIDv7 id
    job_id = str(uuid.uuid4())
    created_at = "2026-01-02T03:04:05.678Z"
    envelope = {"id": job_id, "type": "email.send", "queue": queue, "args": ["a@b.c"],
                "created_at": created_at, "state": "completed", "attempt": 7}  # fmt: skip
    await client.publish(
        client.t.direct_exchange, queue, envelope, message_id=job_id, type="email.send",
        content_type="application/openjobspec+json", headers={"x-ojs-attempt": 1},
    )  # fmt: skip
    # When a native worker takes it, reports completion, then acks
    message = await _get(await client.job_queue(queue))
    report = _report(protocol.COMPLETED, message, result={"sent": True})
    answer = await client.control(protocol.COMPLETED, report, queue=queue)
    await message.ack()
    # Then the daemon knows the job, completed with the result, attempt 1
    assert answer["job"]["state"] == "completed"
    job = _job(native_daemon, job_id)
    assert job["state"] == "completed" and job["result"] == {"sent": True}
    assert job["attempt"] == 1 and job["type"] == "email.send"
    # the producer's created_at is kept; the system fields it copied in are not
    assert job["created_at"] == created_at == job["enqueued_at"]


async def test_a_heartbeat_carrying_the_envelope_adopts_a_job_the_daemon_never_saw(
    native_daemon: Daemon, client: Client
) -> None:
    queue = _queue()
    await client.control(protocol.HELLO, {"queues": [queue]})
    job_id = str(uuid.uuid4())
    envelope = {"id": job_id, "type": "long.job", "queue": queue, "args": []}
    # A beat without the envelope is acked and changes nothing (not an error, not rejected)
    rejected = await client.channel.get_queue(client.t.rejected_queue, ensure=False)
    await client.publish(
        client.t.direct_exchange, f"control.{queue}", {"job_id": job_id, "worker_id": "w"},
        type=protocol.HEARTBEAT,
    )  # fmt: skip
    # With it, the job is adopted and marked active under the worker
    beat = {"job_id": job_id, "worker_id": "w-2", "job": envelope}
    answer = await client.control(protocol.HEARTBEAT, beat, queue=queue)
    assert answer["job"]["state"] == "active" and answer["job"]["worker_id"] == "w-2"
    assert await rejected.get(fail=False) is None


async def test_a_submission_is_validated_routed_and_answered(
    native_daemon: Daemon, client: Client
) -> None:
    queue = _queue()
    # A minimal envelope, the queue taken from the routing key
    answer = await client.publish(
        client.t.submit_exchange, queue, {"type": "report.build", "args": [2026]}, rpc=True
    )
    job = answer["job"]
    assert job["queue"] == queue and job["state"] == "available" and job["id"]
    assert _job(native_daemon, job["id"])["state"] == "available"
    message = await _get(await client.job_queue(queue))
    assert message.message_id == job["id"]
    await message.ack()
    # A scheduled submission is parked, not delivered
    answer = await client.publish(
        client.t.submit_exchange, "",
        {"type": "report.build", "args": [], "queue": queue, "scheduled_at": "+PT1H"},
        rpc=True,
    )  # fmt: skip
    assert answer["job"]["state"] == "scheduled"
    # An invalid one is answered with the OJS error
    answer = await client.publish(client.t.submit_exchange, queue, {"args": []}, rpc=True)
    assert answer["error"]["code"] == "invalid_request"


async def test_an_invalid_message_without_reply_to_lands_in_rejected_with_the_reason(
    native_daemon: Daemon, client: Client
) -> None:
    rejected = await client.channel.get_queue(client.t.rejected_queue, ensure=False)
    await client.publish(client.t.submit_exchange, "x", b"{not json", message_id="bad-1")
    await client.publish(
        "", client.t.global_control_queue, {"job_id": "j"}, type="ojs.control.explode"
    )
    seen = {}
    for _ in range(2):
        message = await _get(rejected)
        seen[message.headers["x-ojs-rejected-from"]] = message
        await message.ack()
    submit, control = seen["x"], seen[client.t.global_control_queue]
    assert submit.body == b"{not json" and submit.message_id == "bad-1"
    assert submit.headers[protocol.H_ERROR_CODE] == "invalid_request"
    assert "not valid JSON" in str(submit.headers[protocol.H_ERROR_MESSAGE])
    assert "unknown control message type" in str(control.headers[protocol.H_ERROR_MESSAGE])


# --- working ---------------------------------------------------------------------------------


async def test_failed_reports_follow_the_retry_policy_to_the_dead_letter_list(
    native_daemon: Daemon, client: Client
) -> None:
    queue = _queue()
    job = _push(
        native_daemon, queue,
        retry={"max_attempts": 2, "initial_interval": "PT0.2S", "jitter": False,
               "on_exhaustion": "dead_letter"},
    )  # fmt: skip
    jobs_queue = await client.job_queue(queue)
    for attempt in (1, 2):
        message = await _get(jobs_queue)
        assert (message.headers or {})["x-ojs-attempt"] == attempt
        error = {"code": "smtp_down", "message": f"try {attempt}", "type": "SmtpError"}
        await client.control(protocol.FAILED, _report(protocol.FAILED, message, error=error),
                             queue=queue)  # fmt: skip
        await message.ack()
    final = await _until(native_daemon, job["id"], "discarded")
    assert final["attempt"] == 2 and [e["message"] for e in final["errors"]] == ["try 1", "try 2"]
    status, body = request("GET", f"{native_daemon.url}/ojs/v1/dead-letter?queue={queue}")
    assert status == 200 and [j["id"] for j in body["jobs"]] == [job["id"]]


async def test_a_second_report_on_the_same_copy_after_the_job_completed_changes_nothing(
    native_daemon: Daemon, client: Client
) -> None:
    """(An older copy's report: the test after this one.)"""
    queue, job, message = await _taken(native_daemon, client)
    done = _report(protocol.COMPLETED, message, result=1)
    await client.control(protocol.COMPLETED, done, queue=queue)
    await message.ack()
    # A duplicate execution reports again: the answer is the job as it stands
    again = await client.control(protocol.FAILED, {**done, "error": {"code": "x"}}, queue=queue)
    assert again["job"]["state"] == "completed" and again["job"]["result"] == 1
    assert _job(native_daemon, job["id"])["state"] == "completed"


async def test_a_late_completed_report_on_a_copy_the_job_has_moved_past_changes_nothing(
    native_daemon: Daemon, client: Client
) -> None:
    """The copy number itself: the job failed once and is `available` again at a newer copy,
    so only `copy` tells the daemon this success report is about the superseded delivery."""
    queue = _queue()
    retry = {"max_attempts": 3, "initial_interval": "PT0.1S", "jitter": False}
    job = _push(native_daemon, queue, retry=retry)
    jobs_queue = await client.job_queue(queue)
    message = await _get(jobs_queue)
    failed = _report(protocol.FAILED, message, error={"code": "x", "retryable": True})
    await client.control(protocol.FAILED, failed, queue=queue)
    await message.ack()
    await _until(native_daemon, job["id"], "available")
    # When the first delivery's worker reports success after all
    late = _report(protocol.COMPLETED, message, result=1)
    assert late["copy"] is not None
    answer = await client.control(protocol.COMPLETED, late, queue=queue)
    # Then nothing changes: the job waits for its next run
    assert answer["job"]["state"] == "available", answer
    stored = _job(native_daemon, job["id"])
    assert stored["state"] == "available" and "result" not in stored, stored
    assert (await _get(jobs_queue)).headers["x-ojs-copy"] != late["copy"]


async def test_a_heartbeat_marks_the_job_active_under_its_worker(
    native_daemon: Daemon, client: Client
) -> None:
    queue, job, message = await _taken(native_daemon, client)
    answer = await client.control(
        protocol.HEARTBEAT, {"job_id": job["id"], "worker_id": "w-9"}, queue=queue
    )
    assert answer["job"]["state"] == "active" and answer["job"]["worker_id"] == "w-9"
    await client.control(protocol.COMPLETED, _report(protocol.COMPLETED, message), queue=queue)
    await message.ack()
    assert _job(native_daemon, job["id"])["state"] == "completed"


async def test_the_binding_retry_exchange_parks_the_job_for_the_delay_in_its_key(
    native_daemon: Daemon, client: Client
) -> None:
    queue = _queue()
    job = _push(native_daemon, queue)
    jobs_queue = await client.job_queue(queue)
    message = await _get(jobs_queue)
    # A worker following the binding text: republish with attempt+1 and the error, then ack
    headers = {**(message.headers or {}), "x-ojs-attempt": 2, "x-ojs-error-code": "TIMEOUT",
               "x-ojs-error-message": "upstream slow"}  # fmt: skip
    sent = time.monotonic()
    await client.publish(
        client.t.retry_exchange, f"{queue}.1500", message.body, message_id=message.message_id,
        type=message.type, headers=headers,
    )  # fmt: skip
    await message.ack()
    parked = await _until(native_daemon, job["id"], "retryable")
    assert parked["error"]["code"] == "timeout" and parked["error"]["message"] == "upstream slow"
    assert parked["retry_delay_ms"] == 1500
    again = await _get(jobs_queue)
    assert time.monotonic() - sent >= 1.5
    assert again.message_id == job["id"]
    assert _job(native_daemon, job["id"])["state"] == "available"
    await again.ack()


async def test_info_and_cancel_rpcs_and_the_cancel_reaches_native_workers(
    native_daemon: Daemon, client: Client
) -> None:
    queue = _queue()
    job = _push(native_daemon, queue)
    # A native worker listens for cancellations of its queue
    listener = await client.channel.declare_queue(exclusive=True, auto_delete=True)
    await listener.bind(client.t.workers_exchange, f"cancel.{queue}")
    info = await client.control(protocol.INFO, {"job_id": job["id"]})
    assert info["job"]["id"] == job["id"] and info["job"]["state"] == "available"
    cancelled = await client.control(protocol.CANCEL, {"job_id": job["id"]}, queue=queue)
    assert cancelled["job"]["state"] == "cancelled"
    told = await _get(listener)
    assert told.type == protocol.CANCEL
    assert json.loads(told.body) == {"job_id": job["id"], "queue": queue}
    # A second cancel is a conflict, answered with the OJS error
    again = await client.control(protocol.CANCEL, {"job_id": job["id"]})
    assert again["error"]["code"] in ("conflict", "invalid_state")
    missing = await client.control(protocol.INFO, {"job_id": "nope"})
    assert missing["error"]["code"] == "not_found"


async def test_the_daemon_lets_go_of_a_queue_once_http_workers_stop_fetching(
    native_daemon: Daemon, client: Client
) -> None:
    queue = _queue()
    # An HTTP worker fetched once (the daemon now consumes the queue and buffers jobs)
    status, _ = request("POST", f"{native_daemon.url}/ojs/v1/workers/fetch", {"queues": [queue]})
    assert status == 200
    ids = {_push(native_daemon, queue)["id"] for _ in range(3)}
    # After the idle period (and the 5 s sweep) the buffered jobs go back to RabbitMQ (each
    # renewed as a fresh copy, one after the other), where a native worker gets every one
    jobs_queue = await client.job_queue(queue)
    held = [await _get(jobs_queue, within=15) for _ in ids]
    assert {message.message_id for message in held} == ids
    for message in held:
        await message.reject(requeue=True)
    # and the daemon consumes the queue no more: the returned jobs stay there, ready
    deadline = time.monotonic() + 10
    while True:
        declared = await client.channel.declare_queue(jobs_queue.name, passive=True)
        counts = (
            declared.declaration_result.message_count,
            declared.declaration_result.consumer_count,
        )
        if counts == (len(ids), 0):
            break
        assert time.monotonic() < deadline, f"(ready, consumers) is {counts}: still consumed"
        await asyncio.sleep(0.05)


async def test_a_worker_nack_without_requeue_dead_letters_the_job(
    native_daemon: Daemon, client: Client
) -> None:
    queue, job, message = await _taken(native_daemon, client)
    # AMQP-009: Basic.Nack(requeue=false) routes through ojs.exchange.dlx; the daemon archives
    await message.nack(requeue=False)
    final = await _until(native_daemon, job["id"], "discarded")
    assert final["error"]["code"] == "rejected"
    status, body = request("GET", f"{native_daemon.url}/ojs/v1/dead-letter?queue={queue}")
    assert status == 200 and [j["id"] for j in body["jobs"]] == [job["id"]]


async def test_an_unroutable_publish_is_refused_not_lost(broker: str) -> None:
    # AMQP-015/016: mandatory publishes that match no queue come back as an error
    prefix = f"unr{uuid.uuid4().hex[:8]}"
    returned: list[int] = []

    class Observer:
        def published(self, exchange_kind: str, confirm_seconds: float) -> None: ...

        def returned(self) -> None:
            returned.append(1)

        def reconnected(self) -> None: ...

        def consumed(self, queue_kind: str) -> None: ...

    b = Broker(AMQP_URL, Topology(prefix), observer=Observer())
    await b.start()
    try:
        body = Outgoing(b"{}", Basic.Properties(delivery_mode=2))
        with pytest.raises(BackendUnavailable, match=r"could not be routed.*NO_ROUTE"):
            await b.publish(b.topology.direct_exchange, "no-such-queue", body)
        assert returned == [1]
    finally:
        await b.delete_everything()
        await b.close()


async def test_a_batch_of_reports_applies_each_and_refuses_only_the_bad_one(
    native_daemon: Daemon, client: Client
) -> None:
    queue = _queue()
    jobs = [_push(native_daemon, queue) for _ in range(3)]
    jobs_queue = await client.job_queue(queue)
    messages = [await _get(jobs_queue) for _ in jobs]
    reports = [
        {"type": protocol.COMPLETED, **_report(protocol.COMPLETED, messages[0], result="a")},
        {"type": protocol.FAILED, **_report(protocol.FAILED, messages[1]),
         "error": {"code": "boom", "message": "b"}},
        {"type": protocol.COMPLETED, "worker_id": "w"},  # no job_id: refused alone
        {"type": protocol.COMPLETED, **_report(protocol.COMPLETED, messages[2], result="c")},
    ]  # fmt: skip
    answer = await client.control(protocol.BATCH, {"reports": reports}, queue=queue)
    for message in messages:
        await message.ack()
    results = answer["results"]
    assert [r.get("job", {}).get("state") for r in results] == [
        "completed", "retryable", None, "completed",
    ]  # fmt: skip
    assert results[2]["error"]["code"] == "invalid_request"
    assert _job(native_daemon, jobs[2]["id"])["result"] == "c"
    # without reply_to, the bad report alone lands in ojs.rejected
    rejected = await client.channel.get_queue(client.t.rejected_queue, ensure=False)
    await client.publish(
        client.t.direct_exchange, f"control.{queue}", {"reports": [reports[2]]},
        type=protocol.BATCH,
    )  # fmt: skip
    refused = await _get(rejected)
    assert json.loads(refused.body) == reports[2]
    assert refused.headers[protocol.H_ERROR_CODE] == "invalid_request"
    await refused.ack()


def test_the_manifest_names_the_amqp_protocol(native_daemon: Daemon) -> None:
    status, body = request("GET", f"{native_daemon.url}/ojs/manifest")
    assert status == 200 and body["protocols"] == ["http", "amqp"]


async def test_a_progress_message_marks_the_job_active_and_records_its_progress(
    native_daemon: Daemon, client: Client
) -> None:
    queue, job, message = await _taken(native_daemon, client)
    report = {"job_id": job["id"], "worker_id": "w-p", "progress": 0.3, "message": "third"}
    answer = await client.control(protocol.PROGRESS, report, queue=queue)
    assert answer["job"]["state"] == "active" and answer["job"]["worker_id"] == "w-p"
    assert answer["job"]["progress"]["progress"] == 0.3
    lower = await client.control(protocol.PROGRESS, {**report, "progress": 0.1}, queue=queue)
    assert lower["job"]["progress"]["progress"] == 0.3  # never goes down
    refused = await client.control(protocol.PROGRESS, {"job_id": job["id"]}, queue=queue)
    assert refused["error"]["code"] == "invalid_request"
    assert "progress" in refused["error"]["message"]
    await client.control(protocol.COMPLETED, _report(protocol.COMPLETED, message), queue=queue)
    await message.ack()
    status, done = request("GET", f"{native_daemon.url}/ojs/v1/jobs/{job['id']}/progress")
    assert status == 200 and done["state"] == "completed" and done["progress"] == 1.0
    assert done["message"] == "third"
    late = await client.control(protocol.PROGRESS, {**report, "progress": 0.9}, queue=queue)
    assert late["job"]["state"] == "completed" and late["job"]["progress"]["progress"] == 1.0
