"""Every wait on the broker ends: one timeout per kind of wait, and what to say when it runs out.

A broker can accept TCP and then say nothing (RabbitMQ out of file handles, a paused VM, a
load balancer in front of a dead node), or stop answering on a connection that stays open.
aiormq 7 bounds little of that by default: its handshake has no timeout of its own (aio-pika's
`timeout=` is an `asyncio.wait_for`), a channel's `timeout=` covers Channel.Open but not the
Confirm.Select after it, Channel.Close waits up to the heartbeat interval (60 s), and RPCs
wait for ever unless given a timeout. Worse, an RPC that is cancelled then sends Channel.Close
and queues it for the writer, and `wait_for` or `asyncio.timeout` around a call wait for the
cancelled call to finish: past their bound they can still hang. `within` does not wait: past
the bound it raises BrokerStalled at once and leaves the cancelled call to finish in the
background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aio_pika.abc
import aiormq.abc

from ojs_amqp.amqp._aiormq import abort as abort  # a stalled link, dropped now
from ojs_amqp.amqp._aiormq import blocked as blocked  # a resource alarm holds the link
from ojs_amqp.amqp.frames import HANDSHAKE, Handshake
from ojs_amqp.errors import BrokerStalled

log = logging.getLogger("ojs_amqp.broker")

T = TypeVar("T")

#: Where the operations guide explains stalled brokers.
GUIDE = "docs/operations.md"


@dataclass(frozen=True, slots=True)
class BrokerTimeouts:
    """Seconds each kind of broker wait may take (Settings.amqp_*_timeout_ms)."""

    #: TCP (and TLS) plus the AMQP handshake up to Connection.OpenOk, per connection.
    connect_s: float = 10.0
    #: Channel.Open (and Confirm.Select on the publishing channel).
    channel_s: float = 5.0
    #: Declaring an exchange, or a queue and its binding.
    declare_s: float = 10.0
    #: The broker's confirm of a publish.
    confirm_s: float = 10.0
    #: Any other request: qos, consume, purge, delete, a passive declare, closing a channel.
    rpc_s: float = 10.0


#: Calls given up on, referenced until their cancellation has run its course.
_abandoned: set[asyncio.Future[Any]] = set()


def stalled(waited_for: str, timeout_s: float) -> BrokerStalled:
    return BrokerStalled(
        f"the broker did not answer {waited_for} within {timeout_s:g} s",
        waited_for=waited_for,
        timeout_s=timeout_s,
    )


async def within(timeout_s: float, waited_for: str, call: Awaitable[T]) -> T:
    """`await call`, but raise BrokerStalled once `timeout_s` has passed without an answer."""
    task = asyncio.ensure_future(call)
    return await _bounded(task, timeout_s, lambda: stalled(waited_for, timeout_s))


async def connect_within(timeout_s: float, connect: Callable[[], Awaitable[T]]) -> T:
    """One connection attempt, bounded; a timeout says how far the handshake got."""
    progress = Handshake()
    token = HANDSHAKE.set(progress)
    try:
        task = asyncio.ensure_future(connect())  # the task's context carries `progress`
    finally:
        HANDSHAKE.reset(token)
    return await _bounded(task, timeout_s, lambda: handshake_stalled(progress, timeout_s))


def handshake_stalled(progress: Handshake, timeout_s: float) -> BrokerStalled:
    """What a connection attempt that ran out of time waited for, in an operator's words."""
    if not progress.transport_up:
        return BrokerStalled(
            f"the broker did not accept a TCP (or TLS) connection within {timeout_s:g} s; "
            "check the host, the port and any firewall in between",
            waited_for="the TCP connection",
            timeout_s=timeout_s,
        )
    if not progress.answered:
        return BrokerStalled(
            "the broker accepted the connection but did not answer the AMQP handshake "
            f"within {timeout_s:g} s; a RabbitMQ out of file handles does this (so do a "
            f"paused broker and a load balancer in front of a dead node) — see {GUIDE}",
            waited_for="the AMQP handshake",
            timeout_s=timeout_s,
        )
    return BrokerStalled(
        f"the broker began the AMQP handshake but did not finish it within {timeout_s:g} s "
        f"(an overloaded broker, or one blocking new connections) — see {GUIDE}",
        waited_for="the end of the AMQP handshake",
        timeout_s=timeout_s,
    )


async def _bounded(
    task: asyncio.Future[T], timeout_s: float, error: Callable[[], BrokerStalled]
) -> T:
    try:
        await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.done():
        return task.result()
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_settle_abandoned)
    raise error()


_LINKS = (
    aiormq.abc.AbstractConnection, aiormq.abc.AbstractChannel,
    aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractChannel,
)  # fmt: skip


def _settle_abandoned(task: asyncio.Future[Any]) -> None:
    """A call given up on ended: retrieve its outcome, and close a connection or channel
    that came up too late to be used (nothing else holds it)."""
    _abandoned.discard(task)
    if task.cancelled() or task.exception() is not None:
        return
    late = task.result()
    if isinstance(late, _LINKS):
        log.debug("closing %r: it opened after its wait had timed out", late)
        closing = asyncio.ensure_future(late.close())
        _abandoned.add(closing)
        closing.add_done_callback(_forget)


def _forget(done: asyncio.Future[Any]) -> None:
    _abandoned.discard(done)
    if not done.cancelled():
        done.exception()
