"""What talking to the broker can fail with, as the exception tuples the edges catch."""

from __future__ import annotations

import asyncio

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
    classic queue with NOT_FOUND "home node ... is down or inaccessible" while the queue's
    process starts (seen when the daemon, reading an SDK's hello, and the SDK declare a
    queue's trio at once). A later try finds the queue up; any other NOT_FOUND is final."""
    return isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity) and (
        "down or inaccessible" in str(exc)
    )
