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
