"""A producer and a worker in plain pika (BlockingConnection), written from the OJS AMQP
binding's §15 examples (15.1 "Publishing a Job", 15.2 "Consuming and Acknowledging Jobs") and
adapted to docs/amqp-protocol.md:

- every exchange and queue name carries the daemon's topology prefix;
- the topology a client declares uses the documented arguments (quorum job queues with
  `x-overflow=reject-publish`, not §15.1's `x-max-priority`), else RabbitMQ answers 406;
- the client says hello, so the daemon watches the queue's control and dead-letter queues;
- the worker reports each outcome to the control queue with confirms and then acks, instead of
  §15.2's ack-then-republish (retries are the daemon's job).

pika is not thread-safe: each client owns its connection and is used from one thread only
(tests run them with `asyncio.to_thread` or as a `PikaWorker` thread).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

JOB_CONTENT_TYPE = "application/openjobspec+json"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class PikaClient:
    """One connection, one confirm-mode channel, and RPCs through direct reply-to."""

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel: BlockingChannel = self.connection.channel()
        self.channel.confirm_delivery()
        self._answers: dict[str, Any] = {}
        self.channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)

    def __enter__(self) -> PikaClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()

    def name(self, name: str) -> str:
        """An exchange or queue name under the prefix (routing keys are never prefixed)."""
        return f"{self.prefix}.{name}" if self.prefix else name

    # --- publishing and RPC ---------------------------------------------------------------

    def publish(self, exchange: str, key: str, body: Any, props: BasicProperties) -> None:
        """Persistent, mandatory, confirmed: pika raises UnroutableError or NackError."""
        props.delivery_mode = 2
        self.channel.basic_publish(
            exchange, key, json.dumps(body).encode("utf-8"), props, mandatory=True
        )

    def _on_reply(
        self, _: BlockingChannel, __: Basic.Deliver, props: BasicProperties, body: bytes
    ) -> None:
        assert props.type == "ojs.reply", props.type
        self._answers[props.correlation_id] = json.loads(body)

    def rpc(
        self, exchange: str, key: str, body: Any, kind: str | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Publish with reply_to + correlation_id; the daemon's answer (job, queues or error)."""
        correlation = uuid.uuid4().hex
        props = BasicProperties(
            type=kind, content_type="application/json", correlation_id=correlation,
            reply_to=DIRECT_REPLY_TO,
        )  # fmt: skip
        self.publish(exchange, key, body, props)
        deadline = time.monotonic() + timeout
        while correlation not in self._answers:
            assert time.monotonic() < deadline, f"no answer to {kind or exchange} in {timeout} s"
            self.connection.process_data_events(time_limit=0.05)
        answer: dict[str, Any] = self._answers.pop(correlation)
        return answer

    def control(self, kind: str, body: Any, queue: str | None = None) -> dict[str, Any]:
        """A control message to `control.{queue}`, or to ojs.control without a queue."""
        if queue is None:
            return self.rpc("", self.name("ojs.control"), body, kind)
        return self.rpc(self.name("ojs.exchange.direct"), f"control.{queue}", body, kind)

    def hello(self, *queues: str) -> None:
        answer = self.control("ojs.control.hello", {"queues": list(queues)})
        assert answer == {"queues": list(queues)}, answer

    def info(self, job_id: str) -> dict[str, Any]:
        """The INFO RPC: the job as the daemon's store has it (raises on an error answer)."""
        answer = self.control("ojs.control.info", {"job_id": job_id})
        assert "job" in answer, answer
        job: dict[str, Any] = answer["job"]
        return job

    # --- §15.1: declare the topology and publish a job ------------------------------------

    def declare_queue(self, queue: str) -> None:
        """§15.1 "Declare topology (idempotent)", with docs/amqp-protocol.md's arguments, then
        hello so the daemon starts watching the queue's dead-letter and control queues."""
        ch, n = self.channel, self.name
        ch.exchange_declare(n("ojs.exchange.direct"), exchange_type="direct", durable=True)
        ch.exchange_declare(n("ojs.exchange.dlx"), exchange_type="direct", durable=True)
        ch.queue_declare(n(f"ojs.queue.{queue}"), durable=True, arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": n("ojs.exchange.dlx"),
            "x-dead-letter-routing-key": queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        })  # fmt: skip
        ch.queue_bind(n(f"ojs.queue.{queue}"), n("ojs.exchange.direct"), routing_key=queue)
        ch.queue_declare(n(f"ojs.queue.dlx.{queue}"), durable=True,
                         arguments={"x-queue-type": "quorum"})  # fmt: skip
        ch.queue_bind(n(f"ojs.queue.dlx.{queue}"), n("ojs.exchange.dlx"), routing_key=queue)
        ch.queue_declare(n(f"ojs.queue.control.{queue}"), durable=True,
                         arguments={"x-queue-type": "classic"})  # fmt: skip
        ch.queue_bind(n(f"ojs.queue.control.{queue}"), n("ojs.exchange.direct"),
                      routing_key=f"control.{queue}")  # fmt: skip
        self.hello(queue)

    def push(self, queue: str, job_type: str, args: list[Any], **extra: Any) -> str:
        """§15.1's publish (binding PUSH); `extra` are more envelope fields (e.g. `retry`).
        Returns the job id."""
        job_id = str(uuid.uuid4())  # §15.1 uses uuid7; any unique id is adopted as is
        now = datetime.now(UTC)
        job = {"specversion": "1.0", "id": job_id, "type": job_type, "queue": queue,
               "args": args, "created_at": now.isoformat(), **extra}  # fmt: skip
        max_attempts = extra.get("retry", {}).get("max_attempts", 3)
        self.publish(
            self.name("ojs.exchange.direct"), queue, job,
            BasicProperties(
                message_id=job_id, type=job_type, content_type=JOB_CONTENT_TYPE,
                content_encoding="utf-8", app_id="ojs", priority=4,
                timestamp=int(now.timestamp()),
                headers={"x-ojs-queue": queue, "x-ojs-attempt": 1,
                         "x-ojs-max-attempts": max_attempts},
            ),
        )  # fmt: skip
        return job_id


# --- §15.2: consume, report, ack ------------------------------------------------------------


class JobFailed(Exception):
    """Raised by a PikaWorker handler: the attempt failed; the worker reports it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


#: A handler takes the envelope and the attempt; returns the result or raises JobFailed.
Handler = Callable[[dict[str, Any], int], Any]


@dataclass(frozen=True)
class Execution:
    """One run of a job, as the worker that ran it saw it."""

    job_id: str
    attempt: int
    outcome: str  # "completed" or "failed"
    worker: str


@dataclass
class PikaWorker:
    """§15.2's consumer on its own thread: Basic.Qos, Basic.Consume with manual acks, and for
    each delivery run the handler, report the outcome (confirmed), then Basic.Ack."""

    url: str
    prefix: str
    queue: str
    handler: Handler
    worker_id: str = "pika-worker"
    prefetch: int = 5
    executions: list[Execution] = field(default_factory=list)
    error: BaseException | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PikaWorker:
        self._thread = threading.Thread(target=self._run, name=self.worker_id, daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise TimeoutError("the pika worker did not start consuming")
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            with PikaClient(self.url, self.prefix) as client:
                client.hello(self.queue)
                client.channel.basic_qos(prefetch_count=self.prefetch)
                client.channel.basic_consume(
                    client.name(f"ojs.queue.{self.queue}"),
                    lambda ch, method, props, body: self._on_message(client, method, props, body),
                    auto_ack=False,
                )
                self._ready.set()
                while not self._stop.is_set():
                    client.connection.process_data_events(time_limit=0.05)
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def _on_message(
        self, client: PikaClient, method: Basic.Deliver, props: BasicProperties, body: bytes
    ) -> None:
        job = json.loads(body)
        headers = props.headers or {}
        attempt = int(headers.get("x-ojs-attempt", 1))
        report: dict[str, Any] = {
            "job_id": job["id"], "worker_id": self.worker_id, "copy": headers.get("x-ojs-copy"),
            "attempt": attempt, "started_at": datetime.now(UTC).isoformat(), "job": job,
        }  # fmt: skip
        try:
            report["result"] = self.handler(job, attempt)
            kind, outcome = "ojs.report.completed", "completed"
        except JobFailed as exc:
            report["error"] = {"code": exc.code, "message": str(exc), "type": "JobFailed"}
            kind, outcome = "ojs.report.failed", "failed"
        client.publish(
            client.name("ojs.exchange.direct"), f"control.{self.queue}", report,
            BasicProperties(type=kind, content_type="application/json"),
        )  # fmt: skip
        client.channel.basic_ack(method.delivery_tag)
        self.executions.append(Execution(job["id"], attempt, outcome, self.worker_id))
