"""How frames get from the socket to aiormq's channels: a faster reader, and queue sizes.

aiormq's own FrameReceiver takes an asyncio lock, fills a BytesIO and awaits three
`readexactly` calls for every frame; a delivery is three frames, so that was ~20 µs of
CPU per delivery on the reference machine (docs/performance.md). This reader awaits the
socket only when the bytes it holds end mid-frame, and decodes each frame with pamqp as
aiormq does, failing with the same aiormq exceptions. `install()` makes aiormq use it; the
daemon and the SDK call it once at start.

Then each channel queues frames for its own reader task. aiormq's default queue, 10 frames,
is about three deliveries: under load every handful of deliveries waited a whole event-loop
turn for that task, and a consumer's prefetch window sat unread in the socket (measured: the
HTTP gateway's buffer empty, ~1 MB in the socket's Recv-Q, 1000 unacked at the broker). The
channels the daemon and the SDK open are given the sizes below instead.
"""

from __future__ import annotations

import asyncio
import logging
import struct

import aiormq.connection
import pamqp.frame
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp.exceptions import PAMQPException

log = logging.getLogger("ojs_amqp.frames")

#: type (1 byte), channel (2), payload size (4); the payload is followed by 0xCE.
_HEAD = struct.Struct(">BHI")
#: aiormq's own reader, kept for comparison (tests) and as the fallback.
AIORMQ_RECEIVER = aiormq.connection.FrameReceiver
_READ_SIZE = 1 << 16
#: A confirm-mode channel's frames are one confirm per publish in flight: no bound needed.
CONFIRM_FRAME_BUFFER = 0  # aiormq: 0 = unbounded


def consumer_frame_buffer(prefetch: int) -> int:
    """A consumer has up to 3 frames (method, header, body) per unacked delivery in flight."""
    return 3 * prefetch + 64


class BufferedFrameReceiver:
    """Drop-in for aiormq.connection.FrameReceiver: an async iterator of
    (bytes consumed, channel, pamqp frame)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.started = False
        self._data = b""
        self._pos = 0

    def __aiter__(self) -> BufferedFrameReceiver:
        return self

    async def __anext__(self) -> tuple[int, int, pamqp.frame.FrameTypes]:
        return await self.get_frame()

    async def get_frame(self) -> tuple[int, int, pamqp.frame.FrameTypes]:
        if self._pos >= len(self._data) and self.reader.at_eof():
            raise StopAsyncIteration
        while True:
            frame = self._cut()
            if frame is not None:
                return self._decode(frame)
            await self._fill()

    def _cut(self) -> bytes | None:
        """The next whole frame held, or None when more bytes are needed."""
        data, pos = self._data, self._pos
        if len(data) - pos < _HEAD.size:
            return None
        if not self.started:
            if data[pos : pos + 4] == b"AMQP":
                raise ProtocolSyntaxError("Unexpected AMQP protocol header")
            self.started = True
        _, _, size = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + size + 1
        if end > len(data):
            return None
        self._pos = end
        return data[pos:end]

    async def _fill(self) -> None:
        try:
            chunk = await self.reader.read(_READ_SIZE)
        except (ConnectionError, OSError) as exc:
            raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc
        if not chunk:
            raise AMQPConnectionError(
                f"Server connection unexpectedly closed with "
                f"{len(self._data) - self._pos} bytes of a frame unread"
            )
        self._data = self._data[self._pos :] + chunk if self._pos < len(self._data) else chunk
        self._pos = 0

    @staticmethod
    def _decode(frame: bytes) -> tuple[int, int, pamqp.frame.FrameTypes]:
        try:
            return pamqp.frame.unmarshal(frame)
        except PAMQPException as exc:
            raise InvalidFrameError(str(exc)) from exc


def install() -> bool:
    """Make aiormq read frames with BufferedFrameReceiver; False (and aiormq's own reader
    kept) when this aiormq is not the version it was written against."""
    current = getattr(aiormq.connection, "FrameReceiver", None)
    if current is BufferedFrameReceiver:
        return True
    if current is None or not hasattr(current, "get_frame"):
        log.warning("aiormq has no FrameReceiver to replace; keeping its own frame reader")
        return False
    aiormq.connection.FrameReceiver = BufferedFrameReceiver  # type: ignore[misc,assignment]
    return True
