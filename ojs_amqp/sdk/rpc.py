"""Request/reply over RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`).

No reply queue is declared: the broker routes answers straight to the consumer on the
requesting channel, matched here by correlation id. One router per channel.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiormq.abc import DeliveredMessage

from ojs_amqp.errors import OjsError

if TYPE_CHECKING:
    from pamqp.commands import Basic

    from ojs_amqp.amqp.pipe import Pipe
from ojs_amqp.sdk.errors import error_from_reply

REPLY_TO = "amq.rabbitmq.reply-to"


def read_reply(body: bytes) -> dict[str, Any]:
    """The payload of a daemon answer; raises the mapped OjsError for `{"error": ...}`."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise OjsError(f"the daemon answered with invalid JSON: {body[:200]!r}") from None
    if not isinstance(payload, dict):
        raise OjsError(f"the daemon answered with a non-object: {payload!r}"[:300])
    if "error" in payload:
        raise error_from_reply(payload["error"])
    return payload


class ReplyRouter:
    """Waiting calls by correlation id; answers nobody waits for any more are dropped."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[bytes]] = {}

    def expect(self) -> tuple[str, asyncio.Future[bytes]]:
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        return correlation_id, future

    def forget(self, correlation_id: str) -> None:
        self._waiting.pop(correlation_id, None)

    def deliver(self, correlation_id: str | None, body: bytes) -> bool:
        """Hand an answer to its caller; False if nobody waits for it (late or foreign)."""
        future = self._waiting.pop(correlation_id or "", None)
        if future is None or future.done():
            return False
        future.set_result(body)
        return True

    async def on_message(self, message: DeliveredMessage) -> None:
        """aiormq consumer callback for the reply-to pseudo-queue."""
        self.deliver(message.header.properties.correlation_id, message.body)

    def fail_all(self, exc: BaseException) -> None:
        """The channel is gone: every pending call fails now rather than at its timeout."""
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(exc)

    def __len__(self) -> int:
        return len(self._waiting)

    async def call(
        self,
        pipe: Pipe,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: Basic.Properties,
        timeout_s: float,
        timed_out: Callable[[], OjsError],
    ) -> dict[str, Any]:
        """Publish a request whose answer comes to REPLY_TO on this router's channel, and
        read it within `timeout_s` (else the error `timed_out` makes)."""
        correlation_id, answer = self.expect()
        properties.reply_to = REPLY_TO
        properties.correlation_id = correlation_id
        try:
            await pipe.publish(
                body, exchange=exchange, routing_key=routing_key, properties=properties
            )
            try:
                async with asyncio.timeout(timeout_s):
                    raw = await answer
            except TimeoutError:
                raise timed_out() from None
        finally:
            self.forget(correlation_id)
            if answer.done() and not answer.cancelled():
                answer.exception()  # retrieved: a failed, unawaited answer must not warn
        return read_reply(raw)
