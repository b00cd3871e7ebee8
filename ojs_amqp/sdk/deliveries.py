"""One delivery of a job, from its arrival to its report: drop it (cancelled, expired,
unreadable), ask the daemon before re-running a copy that came back unfinished, wait for a
slot, run the handler (async on the loop, plain functions in a thread pool), and queue its
report; once the report is confirmed the delivery is acked (docs/amqp-protocol.md,
"Working")."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from ojs_amqp.amqp import codec, protocol
from ojs_amqp.amqp.topology import CONTROL_KEY_PREFIX
from ojs_amqp.errors import OjsError
from ojs_amqp.sdk import control
from ojs_amqp.sdk.attempts import attempt_of, attempts_spent, expired, lost_deliveries
from ojs_amqp.sdk.context import JobContext
from ojs_amqp.sdk.handlers import Handler, Registered
from ojs_amqp.sdk.reports import Outcome
from ojs_amqp.sdk.sessions import Running, Session, settle_quietly

if TYPE_CHECKING:
    from ojs_amqp.sdk.worker import Worker

log = logging.getLogger("ojs_amqp.sdk.worker")

#: Before a delivery whose report could not be published goes back to its queue: a pause,
#: so a broken control queue does not become a hot redelivery loop.
REPORT_RETRY_PAUSE_S = 1.0


class Deliveries:
    """The worker's per-delivery path (`on_delivery` is each consumer's callback)."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker

    async def on_delivery(self, session: Session, queue: str, message: DeliveredMessage) -> None:
        delivery = message.delivery
        assert isinstance(delivery, Basic.Deliver)
        tag = delivery.delivery_tag or 0
        channel = message.channel
        if session.stopping:
            await settle_quietly(channel.basic_reject(tag, requeue=True))
            return
        properties = message.header.properties
        headers = properties.headers or {}
        ref = codec.read_ref(headers, properties.message_id)
        if ref.job_id is not None and ref.job_id in self.w._cancelled:
            self.w.stats.dropped += 1
            await session.pipe.ack(channel, tag)
            return
        try:
            envelope = orjson.loads(message.body)
            if not isinstance(envelope, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            # Unreadable: discard into the dead-letter queue, where the daemon archives it.
            log.error("discarding an unreadable job on %s: %s", queue, exc)
            self.w.stats.dropped += 1
            await settle_quietly(channel.basic_nack(tag, requeue=False, wait=False))
            return
        job_id = ref.job_id or str(envelope.get("id", ""))
        if job_id in self.w._cancelled:
            self.w.stats.dropped += 1
            await session.pipe.ack(channel, tag)
            return
        if expired(envelope, self.w._clock()):
            self.w.stats.expired += 1
            await session.pipe.ack(channel, tag)
            return
        args = envelope.get("args")
        ctx = JobContext(
            id=job_id,
            type=str(envelope.get("type", properties.message_type or "")),
            queue=queue,
            args=args if isinstance(args, list) else [],
            attempt=attempt_of(headers, envelope),
            worker_id=self.w.worker_id,
            envelope=envelope,
        )
        if not await self._acquire_slot(session, tag, channel):
            return
        try:
            lost = lost_deliveries(headers)
            if lost and not await self._may_restart(session, tag, ctx, ref.copy, message, lost):
                return
            await self._execute(session, tag, channel, ctx, ref.copy, message.body)
        finally:
            assert self.w._slots is not None
            self.w._slots.release()

    async def _may_restart(
        self, session: Session, tag: int, ctx: JobContext, copy: int | None,
        message: DeliveredMessage, lost: int,
    ) -> bool:  # fmt: skip
        """A copy that went back to its queue `lost` times unfinished: earlier attempts may
        have died with their workers (a job that kills its worker would otherwise loop for
        ever). Ask the daemon, which counts those attempts, before running it: run only if it
        answers the job active (then at its attempt). Without an answer, judge by the
        delivery count alone, which also counts copies only prefetched by a worker that
        died (docs/sdk.md, "Jobs that kill their worker")."""
        body = control.restart(ctx.id, self.w.worker_id, copy, message.body, lost)
        try:
            answer = await self._ask(session, ctx.queue, body)
        except OjsError as exc:
            if session.abandoned:
                return False  # the delivery died with the connection
            log.warning("the daemon did not answer for redelivered job %s (%s); judging by its "
                        "delivery count", ctx.id, exc.message)  # fmt: skip
            headers = message.header.properties.headers or {}
            spent, limit = attempts_spent(headers, ctx.envelope)
            if 0 < limit <= spent:
                self._lost(session, tag, ctx, copy, message.body, spent, limit, lost)
                return False
            return True
        job = answer.get("job")
        state = job.get("state") if isinstance(job, dict) else None
        if state != "active":
            # Finished meanwhile: exhausted by lost attempts (discarded), or cancelled,
            # completed, or a stale copy. The daemon's record is the outcome: ack.
            if state == "discarded":
                self.w.stats.worker_lost += 1
                log.warning("job %s came back with its attempts spent on lost workers: "
                            "discarded (worker_lost), not run again", ctx.id)  # fmt: skip
            else:
                self.w.stats.dropped += 1
            await session.pipe.ack(message.channel, tag)
            return False
        attempt = job.get("attempt") if isinstance(job, dict) else None
        if isinstance(attempt, int) and attempt >= 1:
            ctx.attempt = attempt
        return True

    async def _ask(self, session: Session, queue: str, body: bytes) -> dict[str, Any]:
        """A control message with a reply (direct reply-to), within `publish_timeout`."""
        return await session.replies.call(
            session.pipe, body, exchange=self.w.topology.direct_exchange,
            routing_key=self.w._report_keys.get(queue) or CONTROL_KEY_PREFIX + queue,
            properties=control.properties(protocol.HEARTBEAT), timeout_s=self.w.publish_timeout,
            timed_out=lambda: OjsError(f"no answer within {self.w.publish_timeout:g}s"),
        )  # fmt: skip

    def _lost(
        self, session: Session, tag: int, ctx: JobContext, copy: int | None, body: bytes,
        spent: int, limit: int, lost: int,
    ) -> None:  # fmt: skip
        """The job came back after its workers died with it on every attempt it had (by the
        delivery count): running it again could loop for ever. Report the last lost attempt
        as failed instead, so the daemon applies `on_exhaustion`; acked once the report is
        confirmed, like any outcome."""
        self.w.stats.worker_lost += 1
        error = control.worker_lost_error(spent, limit, lost)
        ctx.attempt = spent
        report, kind = self.w._report(ctx, copy, self.w._clock(), body, False, error)
        log.warning("job %s came back with all %d attempts spent on lost workers; reporting "
                    "it failed (worker_lost)", ctx.id, limit)  # fmt: skip
        session.reports.add(
            self.w._report_keys.get(ctx.queue) or CONTROL_KEY_PREFIX + ctx.queue,
            Outcome(tag, ctx.id, kind, report),
        )

    async def _acquire_slot(self, session: Session, tag: int, channel: AbstractChannel) -> bool:
        """Wait for one of `concurrency` slots (several queues share them); a stop meanwhile
        hands the delivery back to its queue."""
        slots = self.w._slots
        assert slots is not None
        if not slots.locked():
            await slots.acquire()
            return True
        task = asyncio.current_task()
        assert task is not None
        session.waiting.add(task)
        try:
            await slots.acquire()
        except asyncio.CancelledError:
            if not session.stopping:
                raise
            task.uncancel()
            if not session.abandoned:
                await settle_quietly(channel.basic_reject(tag, requeue=True))
            return False
        finally:
            session.waiting.discard(task)
        if session.stopping:
            slots.release()
            await settle_quietly(channel.basic_reject(tag, requeue=True))
            return False
        return True

    async def _execute(
        self,
        session: Session,
        tag: int,
        channel: AbstractChannel,
        ctx: JobContext,
        copy: int | None,
        body: bytes,
    ) -> None:
        registered = self.w.handlers.lookup(ctx.type)
        running = Running(
            ctx, asyncio.current_task(), registered.is_async if registered else True, body
        )
        session.running[tag] = running
        started = self.w._clock()
        running.next_beat = asyncio.get_running_loop().time() + self.w.heartbeat_interval
        try:
            ok, outcome = await self._call_handler(session, running, registered)
            running.finished = True
            if session.abandoned:
                return  # the delivery died with its channel; the job will run again
            if ctx.cancel_requested:
                # Cancelled while running: the daemon already says "cancelled", and would
                # ignore a report. The delivery is finished with.
                self.w.stats.cancelled += 1
                await session.pipe.ack(channel, tag)
                return
            report, kind = self.w._report(ctx, copy, started, body, ok, outcome)
            # Acked by reports_settled once the report (alone or batched) is confirmed.
            session.reports.add(
                self.w._report_keys.get(ctx.queue) or CONTROL_KEY_PREFIX + ctx.queue,
                Outcome(tag, ctx.id, kind, report),
            )
        finally:
            running.finished = True
            session.running.pop(tag, None)

    async def _call_handler(
        self, session: Session, running: Running, registered: Registered | None
    ) -> tuple[bool, Any]:
        """(True, result) or (False, error dict). Re-raises cancellation that is not a job
        cancel (shutdown, lost connection)."""
        ctx = running.ctx
        if registered is None:
            return False, control.unknown_type_error(ctx.type, self.w.handlers)
        running.in_handler = True
        limit = ctx.envelope.get("timeout_ms")
        deadline: asyncio.Timeout | None = None
        try:
            if registered.is_async and isinstance(limit, int) and limit > 0:
                async with asyncio.timeout(limit / 1000) as deadline:
                    return True, await registered.fn(ctx)
            if registered.is_async:
                return True, await registered.fn(ctx)
            loop = asyncio.get_running_loop()
            return True, await loop.run_in_executor(
                self.w._pool, self._in_thread, registered.fn, ctx
            )
        except asyncio.CancelledError:
            task = running.task
            if ctx.cancel_requested and not session.abandoned and task is not None:
                task.uncancel()
                return False, None
            raise
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
                return False, control.timeout_error(limit)
            return False, control.error_of(exc)
        except Exception as exc:
            return False, control.error_of(exc)
        finally:
            running.in_handler = False

    def _in_thread(self, fn: Handler, ctx: JobContext) -> Any:
        with self.w._threads_lock:
            self.w._threads_busy += 1
        try:
            return fn(ctx)
        finally:
            with self.w._threads_lock:
                self.w._threads_busy -= 1

    def reports_settled(
        self, session: Session, outcomes: list[Outcome], error: OjsError | None
    ) -> None:
        """A report message was confirmed: ack every delivery it covers. Or it was not:
        none of them is acked; after a pause they go back to their queue and run again,
        rather than lose their outcome (the daemon drops a duplicate report by its copy)."""
        tags = [outcome.delivery_tag for outcome in outcomes]
        if error is None:
            completed = sum(1 for outcome in outcomes if outcome.kind == protocol.COMPLETED)
            self.w.stats.completed += completed
            self.w.stats.failed += len(outcomes) - completed
            if len(outcomes) > 1:
                self.w.stats.report_batches += 1
            session.pipe.ack_many(session.consumer, tags)
            return
        self.w.stats.report_failures += len(outcomes)
        log.error(
            "could not report %d jobs (%s; first %s); returning them to their queue",
            len(outcomes), error.message, outcomes[0].job_id,
        )  # fmt: skip
        if not session.abandoned:
            asyncio.get_running_loop().call_later(
                REPORT_RETRY_PAUSE_S, self._hand_back, session, tags
            )

    @staticmethod
    def _hand_back(session: Session, tags: list[int]) -> None:
        if not session.abandoned:
            session.pipe.reject_many(session.consumer, tags)
