"""How frames get from the socket to aiormq's channels: a faster reader, and queue sizes.

aiormq's own FrameReceiver takes an asyncio lock, fills a BytesIO and awaits three
`readexactly` calls for every frame; a delivery is three frames, so that was ~20 µs of
CPU per delivery on the reference machine (docs/performance.md). This reader awaits the
socket only when the bytes it holds end mid-frame, and decodes each frame with pamqp as
aiormq does, failing with the same aiormq exceptions. `install()` makes every aiormq
connection of the process use it (through amqp/_aiormq.py): the daemon calls it at start,
and `ojs-amqp worker` does; an application using the SDK opts in with
`ojs_amqp.sdk.use_fast_frame_reader()`, since it changes its own aio-pika connections too.

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
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pamqp.frame
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

from ojs_amqp.amqp import _aiormq

log = logging.getLogger("ojs_amqp.frames")

#: type (1 byte), channel (2), payload size (4); the payload is followed by 0xCE.
_HEAD = struct.Struct(">BHI")
#: aiormq's own reader, kept for comparison (tests) and as the fallback.
AIORMQ_RECEIVER = _aiormq.AIORMQ_RECEIVER
_READ_SIZE = 1 << 16
_METHOD, _CONTENT_HEADER = 1, 2  # frame types
#: A confirm-mode channel's frames are one confirm per publish in flight: no bound needed.
CONFIRM_FRAME_BUFFER = 0  # aiormq: 0 = unbounded


@dataclass(slots=True)
class Handshake:
    """How far one connection attempt got, so a timed-out attempt can say what it waited
    for (amqp/bounded.py): the transport came up (TCP, and TLS for amqps://), and the broker
    sent its first bytes (Connection.Start)."""

    transport_up: bool = False
    answered: bool = False


#: Set around one connection attempt; the frame reader created for it reports into it.
HANDSHAKE: ContextVar[Handshake | None] = ContextVar("ojs_amqp_handshake", default=None)


def watch_handshake(reader: asyncio.StreamReader) -> None:
    """Report into the attempt's Handshake that the transport is up, and, when the broker's
    first bytes arrive, that it answered (for connections read by aiormq's own reader)."""
    progress = HANDSHAKE.get()
    if progress is None:
        return
    progress.transport_up = True
    feed = reader.feed_data

    def first_bytes(data: bytes) -> None:
        progress.answered = True
        del reader.feed_data  # the class's own from now on
        feed(data)

    reader.feed_data = first_bytes  # type: ignore[method-assign,assignment]


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
        #: The attempt this reader was created for, until the broker's first bytes arrive.
        self._handshake = HANDSHAKE.get()
        if self._handshake is not None:
            self._handshake.transport_up = True

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
        if self._handshake is not None:
            self._handshake.answered = True
            self._handshake = None
        self._data = self._data[self._pos :] + chunk if self._pos < len(self._data) else chunk
        self._pos = 0

    @staticmethod
    def _decode(frame: bytes) -> tuple[int, int, pamqp.frame.FrameTypes]:
        kind = frame[0]
        decoded: tuple[int, int, pamqp.frame.FrameTypes] | None = None
        if kind == _CONTENT_HEADER:
            decoded = decode_content_header(frame)
        elif kind == _METHOD:
            decoded = decode_deliver(frame)
        if decoded is not None:
            return decoded
        try:
            return pamqp.frame.unmarshal(frame)
        except PAMQPException as exc:
            raise InvalidFrameError(str(exc)) from exc


def install() -> bool:
    """Make aiormq read frames with BufferedFrameReceiver; False (and aiormq's own reader
    kept) when this aiormq is not the version it was written against."""
    return _aiormq.install_frame_reader(BufferedFrameReceiver)


# --- content headers and Basic.Deliver -----------------------------------------------------
#
# pamqp decodes a frame field by field, slicing the rest of the buffer after each one; with
# the eight x-ojs-* headers every job copy carries, a delivery's header cost 15 µs and its
# Basic.Deliver 5, the largest costs of taking a delivery in. The decoders below read the
# same bytes at offsets and build the same pamqp objects (in 8 and 1.5 µs; hypothesis tests
# hold them to pamqp's output); on anything they do not expect they defer to pamqp, which
# decodes or raises as it always has.

_U8 = struct.Struct(">B")
_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_SIGNED32 = struct.Struct(">l")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_HEADER_START = struct.Struct(">HHQH")  # class id, weight, body size, first flag word

_PROPERTY_FLAGS = tuple(Basic.Properties.flags.items())  # in wire order


def _short_str(data: bytes, at: int) -> tuple[int, str]:
    end = at + 1 + data[at]
    if end > len(data):
        raise ValueError("short string beyond the frame")
    return end, data[at + 1 : end].decode("utf-8")


def _timestamp(data: bytes, at: int) -> tuple[int, datetime]:
    value: float = _U64.unpack_from(data, at)[0]
    if value > 0xFFFFFFFF:  # as pamqp: beyond 2106 it is taken for milliseconds
        value /= 1000.0
    return at + 8, datetime.fromtimestamp(value, tz=UTC)


def _long_bytes(data: bytes, at: int) -> tuple[int, int, int]:
    length = _U32.unpack_from(data, at)[0]
    start = at + 4
    if start + length > len(data):
        raise ValueError("value beyond the frame")
    return start + length, start, length


def _value(data: bytes, at: int) -> tuple[int, Any]:
    """One field-table or array value: its type byte, then the value."""
    kind = data[at]
    at += 1
    if kind == 0x53:  # S: long string, text when it is UTF-8 (pamqp's rule)
        start = at + 4
        end = start + _U32.unpack_from(data, at)[0]
        if end > len(data):
            raise ValueError("value beyond the frame")
        raw = data[start:end]
        try:
            return end, raw.decode("utf-8")
        except UnicodeDecodeError:
            return end, raw
    fixed = _FIXED.get(kind)
    if fixed is not None:
        reader, size = fixed
        return at + size, reader.unpack_from(data, at)[0]
    if kind == 0x74:  # t
        return at + 1, data[at] != 0
    if kind == 0x46:  # F
        return _table(data, at)
    return _rarer_value(kind, data, at)


def _rarer_value(kind: int, data: bytes, at: int) -> tuple[int, Any]:
    if kind == 0x41:  # A
        end, start, _ = _long_bytes(data, at)
        items, at = [], start
        while at < end:
            at, item = _value(data, at)
            items.append(item)
        return at, items
    if kind == 0x54:  # T
        return _timestamp(data, at)
    if kind in (0x56, 0x00):  # V, and NUL as pamqp reads it: void
        return at, None
    if kind == 0x44:  # D
        decimals, raw = data[at], _I32.unpack_from(data, at + 1)[0]
        return at + 5, Decimal(raw) * (Decimal(10) ** -decimals)
    if kind == 0x78:  # x
        end, start, _ = _long_bytes(data, at)
        return end, bytearray(data[start:end])
    raise ValueError(f"unknown field type {kind!r}")


_FIXED: dict[int, tuple[struct.Struct, int]] = {
    0x62: (_I8, 1), 0x42: (_U8, 1), 0x73: (_I16, 2), 0x75: (_U16, 2), 0x49: (_SIGNED32, 4),
    0x69: (_U32, 4), 0x6C: (_I64, 8), 0x4C: (_I64, 8), 0x66: (_F32, 4), 0x64: (_F64, 8),
}  # fmt: skip


def _table(data: bytes, at: int) -> tuple[int, dict[str, Any]]:
    end, at, _ = _long_bytes(data, at)
    table: dict[str, Any] = {}
    while at < end:
        key_end = at + 1 + data[at]
        if key_end > end:
            raise ValueError("field table key beyond the table")
        key = data[at + 1 : key_end].decode("utf-8")
        at, table[key] = _value(data, key_end)
    return end, table


def _content_header(payload: bytes) -> ContentHeader:
    class_id, weight, body_size, flags = _HEADER_START.unpack_from(payload, 0)
    at = 14
    word = flags
    while word & 1:  # continuation flag words (no Basic property lives in them)
        word = _U16.unpack_from(payload, at)[0]
        at += 2
    properties = Basic.Properties()
    value: Any
    for name, bit in _PROPERTY_FLAGS:
        if not flags & bit:
            continue
        if name == "headers":
            at, value = _table(payload, at)
        elif name in ("delivery_mode", "priority"):
            at, value = at + 1, payload[at]
        elif name == "timestamp":
            at, value = _timestamp(payload, at)
        else:
            at, value = _short_str(payload, at)
        setattr(properties, name, value)
    header = ContentHeader(weight, body_size, properties)
    header.class_id = class_id
    return header


def decode_content_header(frame: bytes) -> tuple[int, int, ContentHeader] | None:
    """A whole content-header frame as pamqp.frame.unmarshal would return it, or None to
    let pamqp decode it (anything unexpected, including malformed input)."""
    if len(frame) < 8 + 14 or frame[-1] != 0xCE:
        return None
    try:
        channel = _U16.unpack_from(frame, 1)[0]
        return len(frame), channel, _content_header(frame[7:-1])
    except Exception:  # pamqp decides: it decodes what we did not expect or raises as it does
        return None


_DELIVER = struct.Struct(">HH")  # class 60 (basic), method 60 (deliver)


def decode_deliver(frame: bytes) -> tuple[int, int, Basic.Deliver] | None:
    """A Basic.Deliver method frame as pamqp.frame.unmarshal would return it (one per
    delivery), or None to let pamqp decode it."""
    if len(frame) < 8 + 4 or frame[-1] != 0xCE or _DELIVER.unpack_from(frame, 7) != (60, 60):
        return None
    try:
        payload = frame[7:-1]
        at, consumer_tag = _short_str(payload, 4)
        delivery_tag = _U64.unpack_from(payload, at)[0]
        redelivered = bool(payload[at + 8] & 1)
        at, exchange = _short_str(payload, at + 9)
        _, routing_key = _short_str(payload, at)
        channel = _U16.unpack_from(frame, 1)[0]
        deliver = Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key)
        return len(frame), channel, deliver
    except Exception:  # pamqp decides
        return None
