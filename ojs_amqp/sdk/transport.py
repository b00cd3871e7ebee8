"""Connecting with the project's backoff (AMQP-025).

The SDK talks to aiormq directly: aio-pika's Message and Exchange objects cost more per
publish than the publish itself; publishing is ojs_amqp/amqp/pipe.py's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiormq.abc import AbstractConnection

from ojs_amqp.amqp import _aiormq, frames
from ojs_amqp.amqp.bounded import connect_within
from ojs_amqp.amqp.failures import CONNECTION_ERRORS
from ojs_amqp.amqp.reconnect import backoff_seconds as backoff_seconds  # importers' old path
from ojs_amqp.amqp.reconnect import with_backoff
from ojs_amqp.logs import redact

log = logging.getLogger("ojs_amqp.sdk")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


async def connect(
    url: str,
    *,
    name: str,
    attempts: int | None,
    on_failure: Callable[[int, BaseException, float], None] | None = None,
    attempt_timeout_s: float = 10.0,
) -> AbstractConnection:
    """Open a connection, retrying with 1 s doubling to 60 s +-25% jitter (AMQP-025);
    `attempts=None` retries forever. Raises the last connection error otherwise. Each
    attempt (TCP, TLS, AMQP handshake) ends within `attempt_timeout_s`: a broker that accepts
    the connection and says nothing fails it with BrokerStalled, saying so."""

    def failed(attempt: int, exc: BaseException, delay: float) -> None:
        if on_failure is not None:
            on_failure(attempt, exc, delay)
        else:
            log.warning(
                "cannot reach the broker at %s (%s); retry %d in %.1fs",
                redact(url), exc, attempt, delay,
            )  # fmt: skip

    async def attempt() -> AbstractConnection:
        connection = _aiormq.connection(
            url, frames.watch_handshake, client_properties={"connection_name": name}
        )
        await connect_within(attempt_timeout_s, connection.connect)
        return connection

    return await with_backoff(
        attempt, retryable=lambda exc: isinstance(exc, CONNECTION_ERRORS), on_failure=failed,
        attempts=attempts,
    )  # fmt: skip
