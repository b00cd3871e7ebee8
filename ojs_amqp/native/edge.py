"""The native AMQP edge: what AMQP clients send the daemon (docs/amqp-protocol.md).

Three inputs, each a queue the daemon consumes: control queues (worker reports, heartbeats,
CANCEL, INFO, hello), the submission queue (plain envelopes to validate and route), and the
binding's retry intake. The AMQP counterpart of http/app.py: parse, call the engine, answer
`reply_to` if asked, then ack. Nothing is dropped silently: what cannot be accepted moves to
ojs.rejected with the reason in its headers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from pamqp.commands import Basic

from ojs_amqp.amqp import codec, protocol
from ojs_amqp.amqp.broker import Broker
from ojs_amqp.amqp.control import ControlMessage, parse_control
from ojs_amqp.amqp.inbound import Inbound
from ojs_amqp.clock import now_ms
from ojs_amqp.core.job import Job, to_wire
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.errors import (
    BackendUnavailable,
    Duplicate,
    InvalidRequest,
    NotFound,
    OjsError,
    QueueFull,
)
from ojs_amqp.metrics import Metrics

log = logging.getLogger("ojs_amqp.native")

#: Unacked control messages per queue: reports are small and quick to apply.
CONTROL_PREFETCH = 200
#: Pause before handing a message back when the broker refused our publish, so a full or
#: flapping broker is not hammered.
REQUEUE_PAUSE_S = 1.0
#: Set on a message `_hand_back` published again: it counts as redelivered.
H_HANDED_BACK = "x-ojs-handed-back"


class NativeEdge:
    def __init__(self, engine: JobEngine, broker: Broker, metrics: Metrics) -> None:
        self.engine = engine
        self.broker = broker
        self.metrics = metrics
        engine.on_new_queue.append(self._watch_control_queue)
        engine.on_reset.append(self.start)

    def _settle(self, message: Inbound) -> None:
        """Ack a message once it is acted on (a closed channel: the broker redelivers it,
        and acting on it again is harmless)."""
        if not message.settled:
            message.ack()
            self.metrics.acked()

    async def start(self) -> None:
        t = self.broker.topology
        carrying = t.job_carrying_queue_arguments()
        await self.broker.consume(
            t.global_control_queue, t.control_queue_arguments(), CONTROL_PREFETCH,
            self._on_global_control,
        )  # fmt: skip
        await self.broker.consume(t.submit_queue, carrying, CONTROL_PREFETCH, self._on_submit)
        await self.broker.consume(
            t.retry_intake_queue, carrying, CONTROL_PREFETCH, self._on_binding_retry
        )

    async def _watch_control_queue(self, queue: str) -> None:
        t = self.broker.topology

        async def on_control(message: Inbound) -> None:
            await self._on_control(message, queue)

        await self.broker.consume(
            t.control_queue(queue), t.control_queue_arguments(), CONTROL_PREFETCH, on_control
        )

    # --- control messages ------------------------------------------------------------------

    async def _on_global_control(self, message: Inbound) -> None:
        await self._on_control(message, None)

    async def _on_control(self, message: Inbound, queue: str | None) -> None:
        try:
            control = parse_control(message.type, message.body)
            if control.kind == protocol.BATCH:
                await self._on_batch(message, control, queue)
                return
            outcome = await self._apply(control, queue)
            answer = await self._answer(control, outcome) if message.reply_to else None
        except BackendUnavailable as exc:
            await self._hand_back(message, exc)
            return
        except NotFound as exc:
            if control.kind in (protocol.HEARTBEAT, protocol.PROGRESS) and not message.reply_to:
                # A beat for a job not adopted yet (binding PUSH, no envelope): nothing to
                # extend, nothing wrong with the message.
                self._settle(message)
            else:
                await self._refuse(message, exc, "control")
            return
        except OjsError as exc:
            await self._refuse(message, exc, "control")
            return
        if answer is not None:
            await self._reply(message, answer)
        self._settle(message)

    async def _apply(self, control: ControlMessage, queue: str | None) -> Job | list[str] | None:
        """Act on a control message: the job as it now stands, the queues announced, or None
        for a stale report (which changes nothing)."""
        kind = control.kind
        if kind == protocol.HELLO:
            self.engine.workers.seen_on(control.worker_id, now_ms(), control.queues, "native")
            for name in control.queues:
                await self.engine.ensure_queue(name)
            return control.queues
        assert control.job_id is not None
        if kind in (protocol.COMPLETED, protocol.FAILED):
            return await self.engine.native.apply(control, queue)
        if kind == protocol.HEARTBEAT:
            return await self.engine.native.heartbeat(control, queue)
        if kind == protocol.PROGRESS:
            return await self.engine.native.progress(control, queue)
        if kind == protocol.CANCEL:
            return await self.engine.cancel(control.job_id)
        return await self.engine.get(control.job_id)

    async def _on_batch(self, message: Inbound, batch: ControlMessage, queue: str | None) -> None:
        """Apply every report of a batch together (their store writes share one commit). A
        report that cannot be applied is refused on its own; if the broker is away, the whole
        batch is handed back, and the reports already applied are stale, hence harmless, the
        second time."""

        async def apply(item: ControlMessage | InvalidRequest) -> Job | None:
            if isinstance(item, InvalidRequest):
                raise item
            return await self.engine.native.apply(item, queue)

        outcomes = await asyncio.gather(
            *(apply(item) for item in batch.reports), return_exceptions=True
        )
        unavailable = [o for o in outcomes if isinstance(o, BackendUnavailable)]
        if unavailable:
            raise unavailable[0]
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, OjsError):
                raise outcome
        answers: list[dict[str, Any]] = []
        raw: list[Any] = []  # the batch's items as sent, read only if one is refused
        for index, (item, outcome) in enumerate(zip(batch.reports, outcomes, strict=True)):
            if isinstance(outcome, OjsError):
                answers.append({"error": outcome.to_wire()})
                if not message.reply_to:
                    raw = raw or orjson.loads(message.body)["reports"]
                    body = orjson.dumps(raw[index])
                    await self._to_rejected(message, body, outcome, "control")
            elif message.reply_to:
                assert isinstance(item, ControlMessage) and not isinstance(outcome, BaseException)
                answers.append(await self._answer(item, outcome))
        if message.reply_to:
            await self._reply(message, {"results": answers})
        self._settle(message)

    async def _answer(
        self, control: ControlMessage, outcome: Job | list[str] | None
    ) -> dict[str, Any]:
        if isinstance(outcome, list):
            return {"queues": outcome}
        assert control.job_id is not None
        job = outcome if outcome is not None else await self.engine.get(control.job_id)
        return {"job": to_wire(job)}

    # --- submissions and binding retries ---------------------------------------------------

    async def _on_submit(self, message: Inbound) -> None:
        try:
            body = _json(message.body)
            if isinstance(body, dict) and message.routing_key and not _names_queue(body):
                body = {**body, "queue": message.routing_key}
            try:
                job = await self.engine.push(body)
            except Duplicate:
                # Redelivered after we stored it but before the ack: it was accepted.
                existing = _job_id(body)
                again = message.redelivered or H_HANDED_BACK in message.headers
                if not (again and existing):
                    raise
                job = await self.engine.get(existing)
        except BackendUnavailable as exc:
            await self._hand_back(message, exc, renew=True)
            return
        except QueueFull as exc:
            # Backpressure: a caller waiting for a reply is told; otherwise the submission
            # waits in ojs.submit until the queue has room.
            if message.reply_to:
                await self._refuse(message, exc, "submit")
            else:
                await self._hand_back(message, exc, renew=True)
            return
        except OjsError as exc:
            await self._refuse(message, exc, "submit")
            return
        if message.reply_to:
            await self._reply(message, {"job": to_wire(job)})
        self._settle(message)

    async def _on_binding_retry(self, message: Inbound) -> None:
        queue, _, delay = (message.routing_key or "").rpartition(".")
        headers = message.headers or {}
        report = FailureReport(
            code=_text(headers.get("x-ojs-error-code")).lower() or "handler_error",
            message=_text(headers.get("x-ojs-error-message")),
        )
        try:
            if not queue or not delay.isdigit():
                raise InvalidRequest(
                    f"routing key {message.routing_key!r} on ojs.exchange.retry must be "
                    "'{queue}.{delay_ms}'"
                )
            ref = codec.read_ref(message.headers, message.message_id)
            await self.engine.native.binding_retry(
                ref, _json(message.body), queue, int(delay), report
            )
        except BackendUnavailable as exc:
            await self._hand_back(message, exc, renew=True)
            return
        except OjsError as exc:
            await self._refuse(message, exc, "retry")
            return
        self._settle(message)

    # --- answers ---------------------------------------------------------------------------

    async def _reply(self, message: Inbound, payload: dict[str, Any]) -> None:
        props = Basic.Properties(
            content_type=codec.CONTENT_TYPE,
            correlation_id=message.correlation_id,
            message_type=protocol.REPLY,
            delivery_mode=1,
        )
        reply_to = message.reply_to or ""
        try:
            await self.broker.publish_nowait(
                "", reply_to, codec.Outgoing(orjson.dumps(payload), props)
            )
        except BackendUnavailable as exc:  # the caller times out and asks again
            log.warning("could not answer %s: %s", reply_to, exc)

    async def _refuse(self, message: Inbound, exc: OjsError, source: str) -> None:
        """Answer the error if asked; otherwise keep the message, with the reason, in
        ojs.rejected. Then ack: it is never dropped, never redelivered in a loop."""
        if message.reply_to:
            await self._reply(message, {"error": exc.to_wire()})
            self._settle(message)
            return
        try:
            await self._to_rejected(message, message.body, exc, source)
        except BackendUnavailable as publish_error:
            await self._hand_back(message, publish_error)
            return
        self._settle(message)

    async def _to_rejected(self, message: Inbound, body: bytes, exc: OjsError, source: str) -> None:
        """Publish `body` to ojs.rejected with the message's properties and the reason."""
        props = codec.properties_of(message)
        props.headers = {
            **(props.headers or {}),
            protocol.H_ERROR_CODE: exc.code,
            protocol.H_ERROR_MESSAGE: exc.message[:1024],
            protocol.H_REJECTED_FROM: message.routing_key or "",
        }
        log.info("moving a message to ojs.rejected (%s): %s", source, exc.message)
        await self.broker.publish(
            "", self.broker.topology.rejected_queue, codec.Outgoing(body, props)
        )
        self.metrics.rejected(source)

    async def _hand_back(self, message: Inbound, exc: OjsError, renew: bool = False) -> None:
        """We could not act on the message now (broker away, queue full): return it to its
        queue to try again after a pause. With `renew` (a quorum queue: submissions, binding
        retries) it is published again as it came, a fresh message, and acked: a requeue
        would count against the queue's delivery limit (20 by default on RabbitMQ 4.x), past
        which a queue with no dead-letter exchange drops it. Requeued if that fails too."""
        log.warning("returning a message to try again later: %s", exc.message)
        await asyncio.sleep(REQUEUE_PAUSE_S)
        if renew and not message.void:
            again = codec.republished(message)
            again.properties.headers = {**(again.properties.headers or {}), H_HANDED_BACK: 1}
            try:
                await self.broker.publish(message.exchange, message.routing_key, again)
            except OjsError:
                pass
            else:
                self._settle(message)
                return
        message.reject(requeue=True)  # a closed channel: the broker redelivers it anyway


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None


def _names_queue(body: dict[str, Any]) -> bool:
    options = body.get("options")
    return "queue" in body or (isinstance(options, dict) and "queue" in options)


def _job_id(body: Any) -> str | None:
    value = body.get("id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)
