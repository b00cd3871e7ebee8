"""The buffered frame reader yields exactly what aiormq's own reader yields, however the
bytes are split across socket reads, and fails the same way on bad input."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
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


# --- the content-header decoder against pamqp's --------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(width=32, allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=8).map(bytearray)
    | st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1),
                   timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0))
    | st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False)
)  # fmt: skip
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_SHORT = st.text(max_size=30)


@st.composite
def _properties(draw: st.DrawFn) -> Basic.Properties:
    fields: dict[str, Any] = {
        "content_type": draw(st.none() | _SHORT),
        "content_encoding": draw(st.none() | _SHORT),
        "headers": draw(st.none() | st.dictionaries(st.text(max_size=12), _VALUES, max_size=9)),
        "delivery_mode": draw(st.none() | st.sampled_from([1, 2])),
        "priority": draw(st.none() | st.integers(0, 255)),
        "correlation_id": draw(st.none() | _SHORT),
        "reply_to": draw(st.none() | _SHORT),
        "expiration": draw(st.none() | st.integers(0, 10**9).map(str)),
        "message_id": draw(st.none() | _SHORT),
        "timestamp": draw(st.none() | st.datetimes(
            min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1),
            timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0))),
        "message_type": draw(st.none() | _SHORT),
        "user_id": draw(st.none() | _SHORT),
        "app_id": draw(st.none() | _SHORT),
    }  # fmt: skip
    return Basic.Properties(**{k: v for k, v in fields.items() if v is not None})


def _pamqp(frame: bytes) -> Any:
    try:
        return pamqp.frame.unmarshal(frame)
    except Exception as exc:
        return type(exc)


def _as_tuple(decoded: Any) -> Any:
    if not isinstance(decoded, tuple):
        return decoded
    consumed, channel, header = decoded
    return consumed, channel, header.class_id, header.body_size, vars(header.properties)


@settings(max_examples=300, deadline=None)
@given(props=_properties(), body_size=st.integers(0, 2**40), channel=st.integers(1, 2047))
def test_content_headers_decode_as_pamqp_decodes_them(
    props: Basic.Properties, body_size: int, channel: int
) -> None:
    frame = pamqp.frame.marshal(ContentHeader(0, body_size, props), channel)
    ours = frames.decode_content_header(frame)
    assert ours is not None
    assert _as_tuple(ours) == _as_tuple(_pamqp(frame))


@settings(max_examples=300, deadline=None)
@given(props=_properties(), data=st.data())
def test_a_damaged_header_decodes_as_pamqp_decodes_it_or_is_left_to_pamqp(
    props: Basic.Properties, data: st.DataObject
) -> None:
    frame = bytearray(pamqp.frame.marshal(ContentHeader(0, 10, props), 1))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(7, len(frame) - 2))
        frame[at] = data.draw(st.integers(0, 255))
    ours = frames.decode_content_header(bytes(frame))
    if ours is not None:  # where we decode, we decode what pamqp decodes
        assert _as_tuple(ours) == _as_tuple(_pamqp(bytes(frame)))


@settings(max_examples=300, deadline=None)
@given(
    tag=st.text(max_size=40), delivery_tag=st.integers(0, 2**64 - 1),
    redelivered=st.booleans(), exchange=st.text(max_size=40), key=st.text(max_size=60),
    channel=st.integers(1, 2047),
)  # fmt: skip
def test_basic_deliver_decodes_as_pamqp_decodes_it(
    tag: str, delivery_tag: int, redelivered: bool, exchange: str, key: str, channel: int
) -> None:
    try:
        frame = pamqp.frame.marshal(
            Basic.Deliver(tag, delivery_tag, redelivered, exchange, key), channel
        )
    except Exception:  # names pamqp refuses to encode never reach a reader
        return
    ours = frames.decode_deliver(frame)
    theirs = _pamqp(frame)
    if ours is None:
        return  # left to pamqp
    assert (ours[0], ours[1], vars(ours[2])) == (theirs[0], theirs[1], vars(theirs[2]))


def test_the_fast_path_decodes_a_common_deliver_itself() -> None:
    """The property test above passes if the fast path gives up every time; this one does
    not: a delivery as RabbitMQ sends it to the daemon is decoded here, not by pamqp."""
    frame = pamqp.frame.marshal(
        Basic.Deliver("ctag-1.amq.ctag-abc", 42, True, "ojs.exchange.direct", "default"), 3
    )
    ours = frames.decode_deliver(frame)
    assert ours is not None, "the fast path left a plain Basic.Deliver to pamqp"
    theirs = _pamqp(frame)
    assert (ours[0], ours[1], vars(ours[2])) == (theirs[0], theirs[1], vars(theirs[2]))


def test_other_method_frames_are_left_to_pamqp() -> None:
    assert frames.decode_deliver(pamqp.frame.marshal(Basic.Ack(delivery_tag=1), 1)) is None
