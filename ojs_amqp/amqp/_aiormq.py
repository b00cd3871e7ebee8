"""The only module that touches aiormq's private state (an AST test holds everything else to
aiormq's public API: tests/unit/test_aiormq_internals.py).

What the fast path relies on, all of it aiormq 7's (pinned in pyproject.toml):
- a confirm-mode Channel's `delivery_tag`, `confirmations` and `message_id_delivery_tag`:
  amqp/pipe.py registers a publish's confirm future there, as `basic_publish` does, so
  aiormq's reader resolves it on Basic.Ack / Nack / Return;
- a Connection's `write_queue`: pipe.py hands it one frame batch per loop turn;
- `aiormq.connection.FrameReceiver`: amqp/frames.py's faster reader replaces it (opt-in);
- a Connection's `channels`, `_reader_task`, `__last_frame_time` and
  `__connection_unblocked`: counting open channels, dropping a stalled link now, and seeing
  a resource alarm.

`check()` looks for them once (in the code of aiormq's constructors, no connection needed);
when one is missing a warning is logged at start, the `ojs_amqp_fast_path` gauge reads 0,
and the public API is used instead: slower, the same semantics.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiormq
import aiormq.connection

log = logging.getLogger("ojs_amqp.amqp")

#: Instance attributes each aiormq constructor must set for the fast path.
_CHANNEL_NEEDS = ("delivery_tag", "confirmations", "message_id_delivery_tag", "max_content_size")
_CONNECTION_NEEDS = (
    "write_queue", "channels", "_Connection__last_frame_time", "_Connection__connection_unblocked",
)  # fmt: skip

Confirmation = asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class FastPath:
    """Whether the installed aiormq has what the fast path uses, and what it lacks."""

    version: str
    missing: tuple[str, ...]

    @property
    def available(self) -> bool:
        return not self.missing


@functools.cache
def check() -> FastPath:
    """Look for every internal the fast path uses in the installed aiormq (cached)."""
    missing = [f"Channel.{n}" for n in _CHANNEL_NEEDS if n not in _assigned(aiormq.Channel)]
    connection_names = _assigned(aiormq.Connection)
    missing += [f"Connection.{n}" for n in _CONNECTION_NEEDS if n not in connection_names]
    receiver = getattr(aiormq.connection, "FrameReceiver", None)
    if receiver is None or not hasattr(receiver, "get_frame"):
        missing.append("connection.FrameReceiver")
    return FastPath(importlib.metadata.version("aiormq"), tuple(missing))


def _assigned(cls: type) -> set[str]:
    """Attribute names `cls.__init__` (and its class annotations) name."""
    init = getattr(cls, "__init__", None)
    code = getattr(init, "__code__", None)
    names = set(code.co_names) if code is not None else set()
    for klass in cls.__mro__:
        names.update(getattr(klass, "__annotations__", {}))
    return names


def report_at_start(gauge: Callable[[bool], None] | None = None) -> bool:
    """Log a warning once when the fast path is off; tell `gauge` either way."""
    found = check()
    if not found.available and not getattr(report_at_start, "warned", False):
        report_at_start.warned = True  # type: ignore[attr-defined]
        log.warning(
            "aiormq %s lacks %s: publishing, acks and frame reading use aiormq's public API "
            "(slower, same semantics); pyproject.toml pins the versions the fast path is for",
            found.version, ", ".join(found.missing),
        )  # fmt: skip
    if gauge is not None:
        gauge(found.available)
    return found.available


# --- channels: confirm bookkeeping -------------------------------------------------------


def confirming_channel(channel: Any) -> bool:
    """The fast path is only taken on the aiormq Channel it was written against."""
    return (
        check().available
        and isinstance(channel, aiormq.Channel)
        and bool(channel.publisher_confirms)
        and channel.on_return_raises
        and isinstance(getattr(channel, "delivery_tag", None), int)
        and isinstance(getattr(channel, "confirmations", None), dict)
        and isinstance(getattr(channel, "message_id_delivery_tag", None), dict)
        and has_write_queue(channel.connection)
    )


def expect_confirm(channel: Any, message_id: str, future: Confirmation) -> int:
    """Take the next delivery tag and register `future` for its confirm (or return), as
    aiormq's own basic_publish does; the registration is dropped once `future` is done."""
    channel.delivery_tag += 1
    tag: int = channel.delivery_tag
    channel.confirmations[tag] = future
    by_id = channel.message_id_delivery_tag
    by_id[message_id] = tag

    def forget(_: Confirmation) -> None:
        if by_id.get(message_id) == tag:
            del by_id[message_id]

    future.add_done_callback(forget)
    return tag


def give_up_confirm(channel: Any, tag: int, loop: asyncio.AbstractEventLoop) -> None:
    """A publish whose confirm is overdue: a cancelled stand-in takes its place, so a late
    confirm (a broker that was blocked by a resource alarm, say) is dropped quietly, and a
    `multiple` one still settles the tags before it; a missing tag would make aiormq log an
    error and ignore the whole frame."""
    confirmations = getattr(channel, "confirmations", None)
    if isinstance(confirmations, dict) and tag in confirmations:
        late: Confirmation = loop.create_future()
        late.cancel()
        confirmations[tag] = late


# --- connections -------------------------------------------------------------------------


def has_write_queue(connection: Any) -> bool:
    """Whether a connection is aiormq 7's, whose writer a frame batch can feed."""
    return isinstance(connection, aiormq.Connection) and isinstance(
        getattr(connection, "write_queue", None), asyncio.Queue
    )


def frame_queue_of(connection: Any) -> asyncio.Queue[Any] | None:
    queue = getattr(connection, "write_queue", None)
    return queue if isinstance(queue, asyncio.Queue) else None


def open_channels(connection: Any) -> Iterator[Any]:
    """The channels of an aiormq connection that are open now."""
    channels = getattr(connection, "channels", None) or {}
    return (ch for ch in channels.values() if ch is not None and not ch.is_closed)


def abort(connection: Any) -> bool:
    """Drop a stalled aiormq connection now, as aiormq itself does when heartbeats stop: the
    link marked stuck, its reader cancelled, so the writer aborts the socket instead of
    waiting for a broker that reads nothing to take a Connection.Close. Its close callbacks
    run as for any lost connection. False when this aiormq lacks those internals."""
    reader = getattr(connection, "_reader_task", None)
    if not isinstance(reader, asyncio.Task) or not hasattr(
        connection, "_Connection__last_frame_time"
    ):
        return False
    connection._Connection__last_frame_time = -math.inf
    reader.cancel()
    return True


def blocked(connection: Any) -> bool:
    """The broker sent Connection.Blocked (a memory or disk alarm) and no Unblocked yet: it
    reads nothing from this connection meanwhile. False when this aiormq does not say."""
    unblocked = getattr(connection, "_Connection__connection_unblocked", None)
    return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()


def connection(
    url: str, on_transport: Callable[[asyncio.StreamReader], None], **kwargs: Any
) -> aiormq.Connection:
    """An aiormq connection (not yet connected) that calls `on_transport(reader)` once its
    TCP (and TLS) transport is up: how far a handshake got is known without the frame
    reader (amqp/frames.py watches the rest)."""
    tls = str(url).startswith("amqps:")
    base = aiormq.connection.TLSTransportFactory if tls else aiormq.connection.TCPTransportFactory

    class Watched(base):  # type: ignore[misc,valid-type]
        async def create(self, *args: Any, **kw: Any) -> Any:
            reader, writer = await super().create(*args, **kw)
            on_transport(reader)
            return reader, writer

    return aiormq.Connection(url, transport_factory=Watched(), **kwargs)


# --- the frame reader --------------------------------------------------------------------

#: aiormq's own reader, kept for comparison (tests) and to put back.
AIORMQ_RECEIVER: Any = getattr(aiormq.connection, "FrameReceiver", None)


def install_frame_reader(reader: type) -> bool:
    """Make every aiormq connection opened from now on read frames with `reader`; False (and
    aiormq's own reader kept) when this aiormq has no FrameReceiver to replace."""
    current = getattr(aiormq.connection, "FrameReceiver", None)
    if current is reader:
        return True
    if current is None or not hasattr(current, "get_frame"):
        log.warning("aiormq has no FrameReceiver to replace; keeping its own frame reader")
        return False
    aiormq.connection.FrameReceiver = reader  # type: ignore[misc,assignment]
    return True


def frame_reader() -> Any:
    """The class aiormq reads frames with now."""
    return getattr(aiormq.connection, "FrameReceiver", None)


def uninstall_frame_reader() -> None:
    """Give aiormq its own reader back."""
    if AIORMQ_RECEIVER is not None:
        aiormq.connection.FrameReceiver = AIORMQ_RECEIVER  # type: ignore[misc]
