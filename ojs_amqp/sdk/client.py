"""The producer side of the SDK: push jobs, look them up and cancel them over AMQP only.

Jobs that can run now go by binding PUSH (one confirmed publish to ojs.exchange.direct);
jobs that need the daemon's bookkeeping first (scheduled in the future, pending, unique) go
to ojs.exchange.submit and wait for the daemon's answer. INFO and CANCEL are RPCs to
ojs.control over direct reply-to. Every envelope is validated locally by the daemon's own
parser first, so a bad push fails with the same InvalidRequest / ValidationFailed the HTTP
API answers, before anything is sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from aiormq.abc import AbstractConnection
from pamqp.commands import Basic

from ojs_amqp.amqp import codec, frames, protocol
from ojs_amqp.amqp.bounded import abort, within
from ojs_amqp.amqp.failures import CONNECTION_ERRORS, PUBLISH_ERRORS
from ojs_amqp.amqp.pipe import Pipe, confirmation_error
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.clock import now_ms
from ojs_amqp.core.envelope import parse_enqueue
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.job import Job, JobState
from ojs_amqp.errors import BackendUnavailable, BrokerStalled, InvalidRequest, OjsError
from ojs_amqp.logs import redact
from ojs_amqp.sdk import control
from ojs_amqp.sdk.announce import announce
from ojs_amqp.sdk.errors import BatchPushError, PublishRejected, ReplyTimeout, Unroutable
from ojs_amqp.sdk.rpc import REPLY_TO, ReplyRouter
from ojs_amqp.sdk.transport import DEFAULT_URL, connect
from ojs_amqp.sdk.wire import job_from_wire, request_envelope, submission_envelope

log = logging.getLogger("ojs_amqp.sdk")


def needs_daemon(job: Job) -> bool:
    """A job the binding PUSH cannot express: it must be stored before it may run."""
    return job.state is not JobState.AVAILABLE or job.unique is not None


class Client:
    """`async with Client(url, prefix=...) as client: job = await client.push(...)`.

    One connection and one confirm-mode channel; safe to share between tasks of one event
    loop. A lost connection is reopened on the next call (with the project's backoff, up to
    `connect_attempts` tries); calls in flight when it drops fail with BackendUnavailable.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "",
        timeout: float = 10.0,
        connect_attempts: int = 5,
        connection_name: str = "ojs-sdk-client",
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.url = url
        self.topology = Topology(prefix)
        #: Seconds any broker wait may take (a connection attempt, a channel, the queue
        #: declarations, a confirm), and the daemon's answer to an RPC: past it a call fails
        #: with BackendUnavailable (BrokerStalled, ReplyTimeout) instead of hanging.
        self.timeout = timeout
        self._connect_attempts = connect_attempts
        self._name = connection_name
        self._clock = clock
        self._ids = UUIDv7Generator()
        self._connection: AbstractConnection | None = None
        self._pipe: Pipe | None = None
        self._replies = ReplyRouter()
        self._lock = asyncio.Lock()
        self._ready_queues: set[str] = set()
        self._announcing: dict[str, asyncio.Future[None]] = {}
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect now (otherwise the first call does)."""
        self._closed = False
        await self._ensure_pipe()

    async def close(self) -> None:
        self._closed = True
        self._replies.fail_all(BackendUnavailable("the client was closed"))
        connection, self._connection, self._pipe = self._connection, None, None
        if connection is not None and not connection.is_closed:
            try:
                await within(self.timeout, "Connection.Close", connection.close())
            except BrokerStalled:
                abort(connection)
            except PUBLISH_ERRORS as exc:  # closing a broken link: nothing more to do
                log.debug("closing the client's connection failed: %r", exc)

    async def _ensure_pipe(self) -> Pipe:
        pipe = self._pipe
        if pipe is not None and not pipe.channel.is_closed:
            return pipe
        async with self._lock:
            if self._pipe is not None and not self._pipe.channel.is_closed:
                return self._pipe
            if self._closed:
                raise BackendUnavailable("the client is closed")
            connection = await self._ensure_connection()
            try:
                channel = await within(
                    self.timeout, "Channel.Open",
                    connection.channel(
                        publisher_confirms=True, frame_buffer_size=frames.CONFIRM_FRAME_BUFFER
                    ),
                )  # fmt: skip
                # Direct reply-to: consume the pseudo-queue (no-ack) before the first request.
                await within(
                    self.timeout, "Basic.Consume of the reply queue",
                    channel.basic_consume(REPLY_TO, self._replies.on_message, no_ack=True),
                )  # fmt: skip
            except BrokerStalled:
                raise
            except PUBLISH_ERRORS as exc:  # aiormq's exceptions end at this edge
                raise BackendUnavailable(f"cannot open a channel: {exc!r}") from None
            channel.closing.add_done_callback(self._channel_closed)
            self._pipe = Pipe(channel, confirm_timeout=self.timeout)
            return self._pipe

    async def _ensure_connection(self) -> AbstractConnection:
        if self._connection is None or self._connection.is_closed:
            try:
                self._connection = await connect(
                    self.url, name=self._name, attempts=self._connect_attempts,
                    attempt_timeout_s=self.timeout,
                )  # fmt: skip
            except BrokerStalled as exc:
                raise BrokerStalled(
                    f"cannot reach the broker at {redact(self.url)}: {exc.message}",
                    waited_for=exc.waited_for,
                    timeout_s=exc.timeout_s,
                ) from None
            except CONNECTION_ERRORS as exc:
                raise BackendUnavailable(
                    f"cannot reach the broker at {redact(self.url)}: {exc}"
                ) from None
        return self._connection

    def _channel_closed(self, _: object) -> None:
        self._replies.fail_all(BackendUnavailable("the broker channel closed"))

    async def _ensure_queue(self, pipe: Pipe, queue: str) -> None:
        """First use of a queue: hello + declarations (see announce.py), once per client."""
        if queue in self._ready_queues:
            return
        pending = self._announcing.get(queue)
        if pending is None:
            # One announcement per queue however many pushes wait for it; shielded, so a
            # cancelled caller does not cancel it for the others.
            pending = asyncio.ensure_future(self._announce(pipe, queue))
            self._announcing[queue] = pending
            pending.add_done_callback(lambda done: self._announced(queue, done))
        await asyncio.shield(pending)

    def _announced(self, queue: str, done: asyncio.Future[None]) -> None:
        self._announcing.pop(queue, None)
        if not done.cancelled():
            done.exception()  # retrieved here; the waiting callers raise it

    async def _announce(self, pipe: Pipe, queue: str) -> None:
        await within(
            self.timeout, f"the hello and the declares of queue {queue}",
            announce(pipe, self.topology, [queue]),
        )  # fmt: skip
        self._ready_queues.add(queue)

    # --- producing -------------------------------------------------------------------------

    def build(
        self, job_type: str, args: Sequence[Any] = (), queue: str = "default", **options: Any
    ) -> Job:
        """Validate a job as `push` would, without sending it (raises the same errors)."""
        now = self._clock()
        body = request_envelope(job_type, args, queue, options, now)
        return parse_enqueue(body, now_ms=now, new_id=self._ids.new(now))

    async def push(
        self, job_type: str, args: Sequence[Any] = (), queue: str = "default", **options: Any
    ) -> Job:
        """Enqueue one job and return it once the broker (or, for jobs that need it, the
        daemon) has confirmed it. Options are OJS envelope fields (`priority`, `retry`,
        `scheduled_at` as text or an aware datetime, `delay`, `expires_at`, `meta`, `tags`,
        `timeout_ms`, `pending`, `unique`, `id`, ...)."""
        job = self.build(job_type, args, queue, **options)
        pipe = await self._ensure_pipe()
        await self._ensure_queue(pipe, job.queue)
        return await self._send(pipe, job)

    async def push_batch(self, jobs: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Enqueue many jobs with all publishes in flight at once, then await every confirm.

        Each item is an envelope: `{"type": ..., "args": [...], "queue"?: ..., **options}`.
        All are validated before anything is sent (the first invalid one raises, naming its
        index). If some publishes fail, BatchPushError says which; the others are pushed.
        """
        built = [self._build_item(index, item) for index, item in enumerate(jobs)]
        if not built:
            return []
        pipe = await self._ensure_pipe()
        for queue in dict.fromkeys(job.queue for job in built):
            await self._ensure_queue(pipe, queue)
        outcomes = await asyncio.gather(
            *(self._start(pipe, job) for job in built), return_exceptions=True
        )
        pushed: list[Job] = []
        failures: dict[int, OjsError] = {}
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, Basic.Ack):
                pushed.append(built[index])
            elif isinstance(outcome, Job):
                pushed.append(outcome)
            elif isinstance(outcome, OjsError):
                failures[index] = outcome
                if isinstance(outcome, Unroutable):
                    self._ready_queues.discard(built[index].queue)
            elif isinstance(outcome, BaseException):
                failures[index] = BackendUnavailable(f"publishing failed: {outcome!r}")
        if failures:
            first = failures[min(failures)]
            raise BatchPushError(
                f"{len(failures)} of {len(built)} jobs were not pushed (first: {first.message})",
                pushed=pushed,
                failures=failures,
            )
        return pushed

    def _build_item(self, index: int, item: Mapping[str, Any]) -> Job:
        if not isinstance(item, Mapping):
            raise InvalidRequest(f"jobs[{index}]: each job must be a mapping")
        options = dict(item)
        job_type = options.pop("type", None)
        args = options.pop("args", ())
        queue = options.pop("queue", "default")
        try:
            if not isinstance(job_type, str):
                raise InvalidRequest("type must be a string", details={"field": "type"})
            if not isinstance(queue, str):
                raise InvalidRequest("queue must be a string", details={"field": "queue"})
            return self.build(job_type, args, queue, **options)
        except (InvalidRequest, OjsError) as exc:
            details = {**exc.details, "index": index}
            raise type(exc)(f"jobs[{index}]: {exc.message}", details=details) from None

    def _start(self, pipe: Pipe, job: Job) -> asyncio.Future[Any]:
        """A batch member in flight: a bare confirm future for binding PUSH (no task per
        publish), a task for a submission (it waits for the daemon's answer)."""
        if needs_daemon(job) or not pipe.fast:
            return asyncio.ensure_future(self._send(pipe, job))
        message = codec.encode(job)
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            future = pipe.start(
                message.body,
                exchange=self.topology.direct_exchange,
                routing_key=job.queue,
                properties=message.properties,
            )
        except OjsError as exc:  # the channel closed mid-batch: this one fails, not all
            result.set_exception(exc)
            return result
        future.add_done_callback(lambda done: _relay(done, result, self.topology, job.queue))
        return result

    async def _send(self, pipe: Pipe, job: Job) -> Job:
        if needs_daemon(job):
            return await self._submit(pipe, job)
        message = codec.encode(job)
        try:
            await pipe.publish(
                message.body,
                exchange=self.topology.direct_exchange,
                routing_key=job.queue,
                properties=message.properties,
            )
        except Unroutable:
            self._ready_queues.discard(job.queue)  # deleted meanwhile: announce again next time
            raise
        return job

    async def _submit(self, pipe: Pipe, job: Job) -> Job:
        """Submission: the daemon validates, stores and routes it, and answers with the job."""
        properties = Basic.Properties(
            content_type=codec.CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=2,
            message_id=job.id,
            message_type=job.type,
            app_id="ojs",
        )
        payload = await self._call(
            pipe,
            orjson.dumps(submission_envelope(job)),
            exchange=self.topology.submit_exchange,
            routing_key=job.queue,
            properties=properties,
        )
        return _job_of(payload)

    # --- RPC -------------------------------------------------------------------------------

    async def info(self, job_id: str) -> Job:
        """The job as the daemon's store has it (NotFound for an unknown id, and for a job
        pushed by binding PUSH that the daemon has not seen yet)."""
        return _job_of(await self._control(protocol.INFO, job_id))

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job (Conflict if it already finished); running workers are told."""
        return _job_of(await self._control(protocol.CANCEL, job_id))

    async def _control(self, kind: str, job_id: str) -> dict[str, Any]:
        pipe = await self._ensure_pipe()
        try:
            return await self._call(
                pipe,
                control.job_request(job_id),
                exchange="",
                routing_key=self.topology.global_control_queue,
                properties=control.properties(kind),
            )
        except Unroutable:
            raise Unroutable(
                f"queue {self.topology.global_control_queue!r} does not exist: no ojs-amqp "
                f"daemon has run with prefix {self.topology.prefix!r} on this broker"
            ) from None

    async def _call(
        self,
        pipe: Pipe,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: Basic.Properties,
    ) -> dict[str, Any]:
        return await self._replies.call(
            pipe, body, exchange=exchange, routing_key=routing_key, properties=properties,
            timeout_s=self.timeout,
            timed_out=lambda: ReplyTimeout(
                f"the daemon did not answer within {self.timeout:g}s "
                f"(is it running with prefix {self.topology.prefix!r}?)"
            ),
        )  # fmt: skip


def _relay(
    done: asyncio.Future[Any], result: asyncio.Future[Any], topology: Topology, queue: str
) -> None:
    """Confirm future -> batch result: the Basic.Ack, or the SDK error."""
    if result.done():
        return
    if done.cancelled():
        result.set_exception(BackendUnavailable("the publish was cancelled"))
    elif done.exception() is not None:
        exc = done.exception()
        assert exc is not None
        result.set_exception(confirmation_error(exc, topology.direct_exchange, queue))
    elif not isinstance(done.result(), Basic.Ack):
        result.set_exception(PublishRejected(f"the broker did not confirm ({done.result()!r})"))
    else:
        result.set_result(done.result())


def _job_of(payload: Mapping[str, Any]) -> Job:
    envelope = payload.get("job")
    if not isinstance(envelope, Mapping):
        raise OjsError(f"the daemon's answer has no job: {dict(payload)!r}"[:300])
    return job_from_wire(envelope)
