"""Connecting with the project's backoff, and confirmed, mandatory publishing through aiormq
with the broker's answers turned into SDK errors.

The SDK talks to aiormq directly: aio-pika's Message and Exchange objects cost more per
publish than the publish itself (see ojs_amqp/amqp/broker.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection
from pamqp.commands import Basic

from ojs_amqp.amqp.broker import CONNECTION_ERRORS, backoff_seconds
from ojs_amqp.errors import BackendUnavailable
from ojs_amqp.logs import redact
from ojs_amqp.sdk.errors import PublishRejected, Unroutable

log = logging.getLogger("ojs_amqp.sdk")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: What a publish can fail with besides the broker's own answers.
PUBLISH_ERRORS = (
    *CONNECTION_ERRORS,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    RuntimeError,
)


async def connect(
    url: str,
    *,
    name: str,
    attempts: int | None,
    on_failure: Callable[[int, BaseException, float], None] | None = None,
) -> AbstractConnection:
    """Open a connection, retrying with 1 s doubling to 60 s +-25% jitter (AMQP-025);
    `attempts=None` retries forever. Raises the last connection error otherwise."""
    attempt = 0
    while True:
        attempt += 1
        try:
            connection = aiormq.Connection(url, client_properties={"connection_name": name})
            await connection.connect()
            return connection
        except CONNECTION_ERRORS as exc:
            if attempts is not None and attempt >= attempts:
                raise
            delay = backoff_seconds(attempt)
            if on_failure is not None:
                on_failure(attempt, exc, delay)
            else:
                log.warning(
                    "cannot reach the broker at %s (%s); retry %d in %.1fs",
                    redact(url), exc, attempt, delay,
                )  # fmt: skip
            await asyncio.sleep(delay)


async def publish(
    channel: AbstractChannel,
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    properties: Basic.Properties,
    confirm_timeout: float,
) -> None:
    """Publish with mandatory=True and wait for the confirm; raise Unroutable when the broker
    returns the message, PublishRejected on a nack, BackendUnavailable when the link fails.

    `wait=False` lets the next publish go before this frame is flushed: the channel lock is
    otherwise held across a write, which serialises pipelined publishes.
    """
    concrete = cast(aiormq.Channel, channel)  # the abstract class lacks `wait`
    try:
        confirmation = await concrete.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=True,
            timeout=confirm_timeout,
            wait=False,
        )
    except aiormq.exceptions.PublishError:
        raise Unroutable(
            f"the broker could not route the message: nothing is bound to exchange "
            f"{exchange or '(default)'!r} with key {routing_key!r}",
            details={"exchange": exchange, "routing_key": routing_key},
        ) from None
    except aiormq.exceptions.DeliveryError as exc:
        raise PublishRejected(f"the broker refused the message ({exc})") from None
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise BackendUnavailable(
            f"exchange {exchange!r} does not exist ({exc}); is a daemon running with this "
            "--prefix?",
            details={"exchange": exchange},
        ) from None
    except TimeoutError:
        raise BackendUnavailable(
            f"the broker did not confirm within {confirm_timeout:g}s"
        ) from None
    except PUBLISH_ERRORS as exc:
        raise BackendUnavailable(f"publishing failed: {exc!r}") from None
    if not isinstance(confirmation, Basic.Ack):
        raise PublishRejected(f"the broker did not confirm the message ({confirmation!r})")
