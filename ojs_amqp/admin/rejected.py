"""`ojs-amqp rejected`: what the native edge refused and why, read straight from the broker.

The daemon moves a message it cannot act on (an unreadable body, an unknown control type, an
invalid envelope with no reply_to) to `ojs.rejected`, with the reason in `x-ojs-*` headers,
and never consumes that queue. Listing takes messages with basic.get and never acks them:
closing the channel gives every one back to the queue, so looking changes nothing but their
redelivered flag. Purging is the only way this command removes anything.
"""

from __future__ import annotations

from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from ojs_amqp.admin.client import AdminError
from ojs_amqp.admin.format import table
from ojs_amqp.amqp import protocol
from ojs_amqp.amqp.topology import Topology

#: Characters of each body shown; the reason is in the headers, the body only identifies it.
BODY_PREVIEW = 200


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _describe(message: AbstractIncomingMessage) -> dict[str, Any]:
    headers = message.headers or {}
    body = message.body.decode("utf-8", "replace")
    return {
        "rejected_from": _text(headers.get(protocol.H_REJECTED_FROM)),
        "error_code": _text(headers.get(protocol.H_ERROR_CODE)),
        "error_message": _text(headers.get(protocol.H_ERROR_MESSAGE)),
        "type": message.type,
        "message_id": message.message_id,
        "body": body[:BODY_PREVIEW] + ("…" if len(body) > BODY_PREVIEW else ""),
        "body_bytes": len(message.body),
    }


class NoRejectedQueue(AdminError):
    exit_status = 1


async def _existing(channel: AbstractChannel, topology: Topology) -> AbstractQueue:
    try:
        return await channel.declare_queue(topology.rejected_queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise NoRejectedQueue(
            f"the broker has no queue {topology.rejected_queue}: is --prefix the daemon's, "
            "and has the daemon run against this broker?"
        ) from None


async def peek(url: str, topology: Topology, limit: int) -> dict[str, Any]:
    """The queue's depth and up to `limit` of its oldest messages, all left in the queue."""
    connection = await aio_pika.connect(url, client_properties={"connection_name": "ojs-admin"})
    try:
        channel = await connection.channel()
        queue = await _existing(channel, topology)
        depth = queue.declaration_result.message_count or 0
        shown = []
        for _ in range(min(limit, depth)):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            shown.append(_describe(message))
        await channel.close()  # the unacked messages go back to the queue
    finally:
        await connection.close()
    return {"queue": topology.rejected_queue, "messages": depth, "shown": shown}


async def purge(url: str, topology: Topology) -> dict[str, Any]:
    connection = await aio_pika.connect(url, client_properties={"connection_name": "ojs-admin"})
    try:
        queue = await _existing(await connection.channel(), topology)
        result = await queue.purge()
    finally:
        await connection.close()
    return {"queue": topology.rejected_queue, "purged": result.message_count or 0}


def render(listing: dict[str, Any]) -> str:
    head = f"{listing['messages']} messages in {listing['queue']}"
    if not listing["shown"]:
        return head
    rows = [
        [m["rejected_from"] or "-", m["error_code"] or "-", m["type"] or "-",
         m["error_message"] or "-"]
        for m in listing["shown"]
    ]  # fmt: skip
    shown = f" (the oldest {len(rows)})" if len(rows) < listing["messages"] else ""
    return f"{head}{shown}\n\n" + table(["FROM", "CODE", "TYPE", "REASON"], rows)
