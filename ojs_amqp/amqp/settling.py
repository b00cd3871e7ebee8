"""Acks and requeues, and the frame batches they travel in: one write per event-loop turn.

A worker sends an ack per job and the daemon one per state change; aiormq's `basic_ack`
queues one frame (one writer wake-up, one `send`) each. Here the Basic.Ack / Basic.Reject
frames are packed with struct and handed to the connection's writer together, in order,
once per loop turn (through amqp/_aiormq.py; without aiormq's write queue the public
`basic_ack` / `basic_reject` are used instead).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import weakref
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import Any

from aiormq.abc import AbstractChannel, ChannelFrame

from ojs_amqp.amqp import _aiormq

log = logging.getLogger("ojs_amqp.pipe")

#: Basic.Ack / Basic.Reject method frames, packed directly: pamqp's marshal costs ~2.5 µs a
#: frame and a worker sends one per job. Type 1 (method), channel, size 13, class 60, method,
#: delivery tag, flags (multiple / requeue), frame end. Checked against pamqp in the tests.
_SETTLE_FRAME = struct.Struct(">BHIHHQBB")
ACK_METHOD = 80
REJECT_METHOD = 90
_FRAME_END = 0xCE


def settle_frame(method: int, channel_number: int, delivery_tag: int, flag: bool) -> bytes:
    """A Basic.Ack (`flag` = multiple) or Basic.Reject (`flag` = requeue) frame."""
    return _SETTLE_FRAME.pack(
        1, channel_number, 13, 60, method, delivery_tag, int(flag), _FRAME_END
    )


#: Whether a connection is aiormq 7's, whose writer FrameBatch feeds.
has_frame_queue = _aiormq.has_write_queue


class FrameBatch:
    """Frames for one aiormq connection, handed to its writer as one write per event-loop
    turn. Order is kept: frames added later never overtake earlier ones."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        queue = _aiormq.frame_queue_of(connection)
        if queue is None:
            raise TypeError(f"{connection!r} has no write queue to batch frames into")
        self._queue = queue
        self._loop = asyncio.get_running_loop()
        self._chunks: list[bytes] = []
        self._scheduled = False
        self._backlog: deque[ChannelFrame] = deque()
        self._backlog_task: asyncio.Task[None] | None = None

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        if not self._scheduled:
            return
        self._scheduled = False
        if not self._chunks:
            return
        frame = ChannelFrame(payload=b"".join(self._chunks), should_close=False)
        self._chunks.clear()
        if self._backlog_task is None:
            try:
                self._queue.put_nowait(frame)
                return
            except asyncio.QueueFull:
                pass
        # The writer is behind: keep order by queueing behind what already waits.
        self._backlog.append(frame)
        if self._backlog_task is None:
            self._backlog_task = asyncio.ensure_future(self._drain_backlog())

    async def drained(self) -> None:
        """Everything added so far is in the connection's write queue."""
        self.flush()
        if self._backlog_task is not None:
            await asyncio.shield(self._backlog_task)

    def clear(self) -> None:
        self._chunks.clear()

    async def _drain_backlog(self) -> None:
        try:
            while self._backlog:
                await self._queue.put(self._backlog.popleft())
        finally:
            self._backlog_task = None


class Settler:
    """Acks and requeues for the channels of one connection: packed with struct and written
    through `batch` (one write per loop turn), or through aiormq's public basic_ack /
    basic_reject when there is no batch (aiormq internals missing) or the channel belongs to
    another connection."""

    def __init__(self, connection: Any, batch: FrameBatch | None) -> None:
        self._connection = connection
        self._batch = batch
        #: Slow-path settles, referenced until they end (flush() waits for them).
        self._slow: set[asyncio.Task[None]] = set()
        #: Channels about to be closed by us: nothing more is written for them.
        self._stopped: weakref.WeakSet[AbstractChannel] = weakref.WeakSet()

    async def stop(self, channel: AbstractChannel) -> None:
        """Call before closing `channel`: what was queued for it is handed to the writer
        now, ahead of the Channel.Close, and later settles for it are dropped (its deliveries
        go back to their queues with the close). A frame that followed the close would make
        the broker close the whole connection (504 CHANNEL_ERROR)."""
        self._stopped.add(channel)
        await self.flush()

    def settle(
        self, channel: AbstractChannel, delivery_tags: Iterable[int], method: int
    ) -> asyncio.Task[None] | None:
        """Ack (method 80) or requeue (90) deliveries of `channel`; a closed channel means they
        are void already (the broker redelivers them), so that is not an error. Returns the
        task doing it on the slow path (None when queued on the fast path)."""
        if channel.is_closed or channel in self._stopped:
            return None
        batch = self._batch
        if batch is not None and channel.connection is self._connection:
            number = channel.number
            flag = method == REJECT_METHOD  # requeue; an ack is never `multiple`
            for tag in delivery_tags:
                batch.add(settle_frame(method, number, tag, flag))
            return None
        coro = _settle_slowly(channel, list(delivery_tags), method, method == REJECT_METHOD)
        task = _keep(self._slow, coro)
        task.add_done_callback(_log_settle_failure)
        return task

    def discard(self, channel: AbstractChannel, delivery_tag: int) -> None:
        """Basic.Reject(requeue=false): the broker dead-letters the message or drops it."""
        if channel.is_closed or channel in self._stopped:
            return
        if self._batch is not None and channel.connection is self._connection:
            self._batch.add(settle_frame(REJECT_METHOD, channel.number, delivery_tag, False))
            return
        task = _keep(self._slow, _settle_slowly(channel, [delivery_tag], REJECT_METHOD, False))
        task.add_done_callback(_log_settle_failure)

    async def flush(self) -> None:
        """Wait until every settle so far is handed to the connection's writer."""
        if self._slow:
            await asyncio.wait(set(self._slow))
        if self._batch is not None:
            await self._batch.drained()


def _keep(tasks: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task for `coro`, held in `tasks` until it ends (the loop keeps only weak refs)."""
    task = asyncio.ensure_future(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


async def _settle_slowly(
    channel: AbstractChannel, tags: list[int], method: int, requeue: bool
) -> None:
    """The public aiormq path, for channels the fast path does not cover."""
    for tag in tags:
        if method == ACK_METHOD:
            await channel.basic_ack(tag, wait=False)
        else:
            await channel.basic_reject(tag, requeue=requeue)


def _log_settle_failure(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.debug("settling deliveries failed (%r); the broker will redeliver", done.exception())
