"""Confirmed publishes and acks, written to the socket in one batch per event-loop turn.

aiormq's `basic_publish` costs ~75 µs of CPU per message: a channel lock, a timeout timer
and one queued frame (one writer wake-up, one `send`) each. A worker sends a report and an
ack per job, and the daemon a copy per state change, so that was most of their CPU. The
pipe (used by the SDK and by the daemon's Broker) marshals the same frames with pamqp,
registers the confirm future exactly where aiormq's own `basic_publish` does (so aiormq's
reader resolves it on Basic.Ack / Nack / Return), and hands everything produced in one loop
turn to the connection's writer as a single frame batch: ~25 µs per publish and far fewer
syscalls. Delivery tags stay in order because tagging and queueing happen together, without
an await in between, and nothing else publishes on the pipe's channel.

That relies on aiormq 7 internals (the confirm bookkeeping of a channel, the connection's
write queue), reached through amqp/_aiormq.py only; when they are missing the pipe falls
back to the public `basic_publish` / `basic_ack`, slower but the same semantics (a warning
at start, and the `ojs_amqp_fast_path` gauge, say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

import aiormq
import pamqp.frame
from aiormq.abc import AbstractChannel
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from ojs_amqp.amqp import _aiormq
from ojs_amqp.amqp.bounded import stalled
from ojs_amqp.amqp.failures import PUBLISH_ERRORS
from ojs_amqp.amqp.settling import ACK_METHOD as ACK_METHOD  # importers' old path
from ojs_amqp.amqp.settling import REJECT_METHOD as REJECT_METHOD
from ojs_amqp.amqp.settling import FrameBatch as FrameBatch
from ojs_amqp.amqp.settling import Settler as Settler
from ojs_amqp.amqp.settling import _keep
from ojs_amqp.amqp.settling import has_frame_queue as has_frame_queue
from ojs_amqp.amqp.settling import settle_frame as settle_frame
from ojs_amqp.errors import BackendUnavailable, OjsError, PublishRejected, Unroutable

log = logging.getLogger("ojs_amqp.pipe")

Confirmation = asyncio.Future[Any]
#: Called once a publish is settled: None when the broker confirmed it, else the SDK error.
Settled = Callable[[OjsError | None], None]

#: Whether a channel can take the fast path (aiormq 7's confirm-mode Channel).
has_aiormq_internals = _aiormq.confirming_channel


def confirmation_error(exc: BaseException, exchange: str, routing_key: str) -> OjsError:
    """The SDK error for what a confirm future failed with: aiormq's exceptions end here, at
    the amqp/ edge (an OjsError passes through as it is)."""
    if isinstance(exc, aiormq.exceptions.PublishError):
        returned = getattr(getattr(exc, "message", None), "delivery", None)
        reply = getattr(returned, "reply_text", None) or "returned"
        return Unroutable(
            f"the broker could not route the message ({reply}): nothing is bound to exchange "
            f"{exchange or '(default)'!r} with key {routing_key!r}",
            details={"exchange": exchange, "routing_key": routing_key},
        )
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return PublishRejected(f"the broker refused the message ({exc})")
    if isinstance(exc, OjsError):
        return exc
    return BackendUnavailable(f"publishing failed: {exc!r}")


class Pipe:
    """Publishes on one confirm-mode channel, and acks for channels of the same connection."""

    def __init__(self, channel: AbstractChannel, *, confirm_timeout: float) -> None:
        self.channel = channel
        self.fast = has_aiormq_internals(channel)
        self.confirm_timeout = confirm_timeout
        self._loop = asyncio.get_running_loop()
        self._batch = FrameBatch(channel.connection) if self.fast else None
        #: Acks and requeues for the channels of the pipe's connection.
        self.settler = Settler(channel.connection, self._batch)
        self._heads: dict[tuple[str, str], bytes] = {}
        self._ids = itertools.count(1)
        #: (deadline, tag, future) in publish order, for the confirm timeout.
        self._deadlines: deque[tuple[float, int, Confirmation]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed: BaseException | None = None
        #: Publishes of the slow path (public aiormq API), referenced until they end.
        self._slow_publishes: set[asyncio.Task[None]] = set()
        channel.closing.add_done_callback(self._on_channel_closed)

    # --- publishing ------------------------------------------------------------------------

    def start(
        self, body: bytes, *, exchange: str, routing_key: str, properties: Basic.Properties
    ) -> Confirmation:
        """Queue a mandatory publish; the future resolves with the broker's confirm frame
        (or fails with Unroutable / PublishRejected / BackendUnavailable). Fast path only."""
        if self._closed is not None:
            raise BackendUnavailable(f"the publishing channel is closed ({self._closed!r})")
        channel = self.channel
        if properties.message_id is None:
            properties.message_id = f"p{next(self._ids)}"  # returns are matched by it
        future: Confirmation = self._loop.create_future()
        tag = _aiormq.expect_confirm(channel, properties.message_id, future)
        head = self._heads.get((exchange, routing_key))
        if head is None:
            method = Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)
            head = self._heads[(exchange, routing_key)] = pamqp.frame.marshal(
                method, channel.number
            )
        number = channel.number
        batch = self._batch
        assert batch is not None
        batch.add(head)
        batch.add(pamqp.frame.marshal(ContentHeader(0, len(body), properties), number))
        limit = cast(aiormq.Channel, channel).max_content_size
        for offset in range(0, len(body), limit):
            batch.add(pamqp.frame.marshal(ContentBody(body[offset : offset + limit]), number))
        self._deadlines.append((self._loop.time() + self.confirm_timeout, tag, future))
        if self._watchdog is None:
            self._arm_watchdog()
        return future

    async def publish(
        self, body: bytes, *, exchange: str, routing_key: str, properties: Basic.Properties
    ) -> None:
        """Publish with mandatory=True and wait for the confirm (errors as publish_slowly)."""
        if not self.fast:
            await publish_slowly(
                self.channel, body, exchange=exchange, routing_key=routing_key,
                properties=properties, confirm_timeout=self.confirm_timeout,
            )  # fmt: skip
            return
        future = self.start(body, exchange=exchange, routing_key=routing_key, properties=properties)
        try:
            confirmation = await future
        except OjsError:
            raise
        except Exception as exc:  # aiormq's, or the link's: wrapped here
            raise confirmation_error(exc, exchange, routing_key) from None
        if not isinstance(confirmation, Basic.Ack):
            raise PublishRejected(f"the broker did not confirm the message ({confirmation!r})")

    def send(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: Basic.Properties,
        settled: Settled,
    ) -> None:
        """Publish like `publish`, but call `settled(None)` on the confirm, or `settled(error)`,
        instead of being awaited: no task per message on the fast path. `settled` is always
        called later, from the event loop, exactly once."""
        if not self.fast:
            task = _keep(
                self._slow_publishes,
                self.publish(
                    body, exchange=exchange, routing_key=routing_key, properties=properties
                ),
            )
            task.add_done_callback(lambda done: settled(_task_error(done)))
            return
        try:
            future = self.start(
                body, exchange=exchange, routing_key=routing_key, properties=properties
            )
        except OjsError as exc:
            self._loop.call_soon(settled, exc)
            return

        def on_confirm(done: Confirmation) -> None:
            settled(confirm_error(done, exchange, routing_key))

        future.add_done_callback(on_confirm)

    # --- acknowledging ---------------------------------------------------------------------

    async def ack(self, channel: AbstractChannel, delivery_tag: int) -> None:
        """Basic.Ack(multiple=false) for a delivery on `channel` (same connection); a closed
        channel means the delivery is void already, so that is not an error."""
        slow = self.settle(channel, [delivery_tag], ACK_METHOD)
        if slow is not None:
            await asyncio.wait([slow])

    def ack_many(self, channel: AbstractChannel, delivery_tags: Iterable[int]) -> None:
        """One Basic.Ack(multiple=false) per delivery (the binding never acks `multiple`: a
        delivery in between may still be running), written together."""
        self.settle(channel, delivery_tags, ACK_METHOD)

    def reject_many(self, channel: AbstractChannel, delivery_tags: Iterable[int]) -> None:
        """Basic.Reject(requeue=true) per delivery: hand the jobs back to their queue."""
        self.settle(channel, delivery_tags, REJECT_METHOD)

    def settle(
        self, channel: AbstractChannel, delivery_tags: Iterable[int], method: int
    ) -> asyncio.Task[None] | None:
        return self.settler.settle(channel, delivery_tags, method)

    async def flush(self) -> None:
        """Wait until everything queued so far is handed to the connection's writer."""
        await self.settler.flush()
        queue = _aiormq.frame_queue_of(self.channel.connection)
        if queue is not None and not self.channel.connection.is_closed:
            # Bounded: a writer that died with its connection never empties the queue.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.confirm_timeout):
                    await queue.join()

    # --- internals -------------------------------------------------------------------------

    def _arm_watchdog(self) -> None:
        delay = max(0.05, min(1.0, self.confirm_timeout / 2))
        self._watchdog = self._loop.call_later(delay, self._check_deadlines)

    def _check_deadlines(self) -> None:
        """Fail publishes whose confirm is overdue (one timer for all, not one each)."""
        self._watchdog = None
        now = self._loop.time()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][2].done() or deadlines[0][0] <= now):
            _, tag, future = deadlines.popleft()
            if not future.done():
                _aiormq.give_up_confirm(self.channel, tag, self._loop)
                future.set_exception(stalled("a publish confirm", self.confirm_timeout))
        if deadlines:
            self._arm_watchdog()

    def _on_channel_closed(self, closing: asyncio.Future[Any]) -> None:
        reason: BaseException = BackendUnavailable("the publishing channel closed")
        if not closing.cancelled() and closing.exception() is not None:
            reason = BackendUnavailable(f"the publishing channel closed: {closing.exception()!r}")
        self._closed = reason
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._deadlines:
            _, _, future = self._deadlines.popleft()
            if not future.done():
                future.set_exception(reason)
        if self._batch is not None:
            self._batch.clear()


def confirm_error(done: Confirmation, exchange: str, routing_key: str) -> OjsError | None:
    """What a settled confirm future means: None for Basic.Ack, else the SDK error."""
    if done.cancelled():
        return BackendUnavailable("the publish was cancelled (the channel closed)")
    exc = done.exception()
    if exc is None:
        confirmation = done.result()
        if isinstance(confirmation, Basic.Ack):
            return None
        return PublishRejected(f"the broker did not confirm the message ({confirmation!r})")
    return confirmation_error(exc, exchange, routing_key)


def _task_error(done: asyncio.Future[None]) -> OjsError | None:
    if done.cancelled():
        return BackendUnavailable("the publish was cancelled")
    exc = done.exception()
    if exc is None or isinstance(exc, OjsError):
        return exc
    return BackendUnavailable(f"the publish failed: {exc!r}")


async def publish_slowly(
    channel: AbstractChannel,
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    properties: Basic.Properties,
    confirm_timeout: float,
) -> None:
    """The pipe's path without aiormq internals: publish with mandatory=True and wait for
    the confirm; raise Unroutable when the broker returns the message, PublishRejected on a
    nack, BackendUnavailable when the link fails.

    `wait=False` lets the next publish go before this frame is flushed: the channel lock is
    otherwise held across a write, which serialises pipelined publishes.
    """
    concrete = cast(aiormq.Channel, channel)  # the abstract class lacks `wait`
    try:
        confirmation = await concrete.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=True,
            timeout=confirm_timeout,
            wait=False,
        )
    except aiormq.exceptions.DeliveryError as exc:  # returned (unroutable) or nacked
        raise confirmation_error(exc, exchange, routing_key) from None
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise BackendUnavailable(
            f"exchange {exchange!r} does not exist ({exc}); is a daemon running with this "
            "--prefix?",
            details={"exchange": exchange},
        ) from None
    except TimeoutError:
        raise stalled("a publish confirm", confirm_timeout) from None
    except PUBLISH_ERRORS as exc:
        raise BackendUnavailable(f"publishing failed: {exc!r}") from None
    if not isinstance(confirmation, Basic.Ack):
        raise PublishRejected(f"the broker did not confirm the message ({confirmation!r})")
