"""What talking to the broker can fail with, as the exception tuples the edges catch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiormq

from ojs_amqp.errors import BrokerStalled

#: The link is gone, never came up, or stopped answering in time: worth reconnecting (with
#: backoff) and retrying.
CONNECTION_ERRORS = (
    BrokerStalled,
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)
#: What a publish can fail with besides the broker's own answers (return, nack).
PUBLISH_ERRORS = (
    *CONNECTION_ERRORS,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    RuntimeError,
)


#: How long to wait before each new try of a declare that met `is_declare_race`.
DECLARE_RACE_RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8)


def is_declare_race(exc: BaseException) -> bool:
    """RabbitMQ 4.0 answers a declare that meets another connection's declare of the same new
    queue with NOT_FOUND "home node ... is down or inaccessible" while the queue's
    process starts (seen when the daemon, reading an SDK's hello, and the SDK declare a
    queue's trio at once). A later try finds the queue up; any other NOT_FOUND is final."""
    return isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity) and (
        "down or inaccessible" in str(exc)
    )


async def through_declare_races(
    declare: Callable[[], Awaitable[object]],
    on_race: Callable[[float], Awaitable[None]],
) -> None:
    """`await declare()`; one that met `is_declare_race` is tried again after each of
    DECLARE_RACE_RETRY_DELAYS_S, `on_race(delay)` first (the error closed the channel: the
    caller opens another, or logs). The daemon's declares and the SDK's share this."""
    for delay in (*DECLARE_RACE_RETRY_DELAYS_S, None):
        try:
            await declare()
            return
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            if delay is None or not is_declare_race(exc):
                raise
        await on_race(delay)
        await asyncio.sleep(delay)
