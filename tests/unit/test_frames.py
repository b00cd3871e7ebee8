"""The buffered frame reader yields exactly what aiormq's own reader yields, however the
bytes are split across socket reads, and fails the same way on bad input."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiormq.connection
import pamqp.frame
import pytest
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from ojs_amqp.amqp import frames
from ojs_amqp.amqp.frames import BufferedFrameReceiver

ORIGINAL = frames.AIORMQ_RECEIVER


def _stream() -> bytes:
    """A delivery with headers and a body larger than one read, a heartbeat, an ack."""
    props = Basic.Properties(
        message_id="j1", message_type="email.send", delivery_mode=2,
        headers={"x-ojs-attempt": 2, "x-ojs-queue": "mail", "x-ojs-created-at": "2026-01-01"},
    )  # fmt: skip
    body = b'{"args":["' + b"x" * 70_000 + b'"]}'
    parts = [
        pamqp.frame.marshal(Basic.Deliver("ctag", 7, False, "ex", "mail"), 3),
        pamqp.frame.marshal(ContentHeader(0, len(body), props), 3),
        pamqp.frame.marshal(ContentBody(body), 3),
        pamqp.frame.marshal(Heartbeat(), 0),
        pamqp.frame.marshal(Basic.Ack(delivery_tag=5, multiple=True), 1),
    ]
    return b"".join(parts)


async def _read_all(receiver_class: Any, chunks: list[bytes]) -> list[tuple[int, int, Any]]:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    receiver = receiver_class(reader)
    out = []
    async for item in receiver:
        out.append(item)
    return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def _comparable(frames_read: list[tuple[int, int, Any]]) -> list[tuple[int, int, str, Any]]:
    out = []
    for consumed, channel, frame in frames_read:
        detail: Any = frame.value if isinstance(frame, ContentBody) else vars(frame)
        if isinstance(frame, ContentHeader):
            detail = (frame.body_size, vars(frame.properties))
        out.append((consumed, channel, type(frame).__name__, detail))
    return out


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_frames_match_aiormqs_own_reader_for_any_split_of_the_bytes(cuts: list[int]) -> None:
    chunks = _split(_stream(), cuts)
    ours = asyncio.run(_read_all(BufferedFrameReceiver, chunks))
    theirs = asyncio.run(_read_all(ORIGINAL, [b"".join(chunks)]))
    assert [f[2].__class__ for f in ours] == [Basic.Deliver, ContentHeader, ContentBody,
                                              Heartbeat, Basic.Ack]  # fmt: skip
    assert _comparable(ours) == _comparable(theirs)


def test_a_connection_closed_mid_frame_is_a_connection_error() -> None:
    data = _stream()
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        asyncio.run(_read_all(BufferedFrameReceiver, [data[:100]]))


def test_a_frame_without_its_end_marker_is_an_invalid_frame() -> None:
    frame = bytearray(pamqp.frame.marshal(Basic.Ack(delivery_tag=1), 1))
    frame[-1] = 0x00
    with pytest.raises(InvalidFrameError):
        asyncio.run(_read_all(BufferedFrameReceiver, [bytes(frame)]))


def test_a_protocol_header_instead_of_a_frame_is_refused() -> None:
    with pytest.raises(ProtocolSyntaxError):
        asyncio.run(_read_all(BufferedFrameReceiver, [b"AMQP\x00\x00\x09\x01"]))


def test_install_replaces_aiormqs_reader_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", ORIGINAL)
    assert frames.install() is True
    assert aiormq.connection.FrameReceiver is BufferedFrameReceiver
    assert frames.install() is True  # idempotent
