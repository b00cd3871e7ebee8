"""A delivery reads its properties from aiormq's decoded header and is settled at most once
(a second ack of one delivery tag would make the broker close the channel)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from ojs_amqp.amqp.inbound import Inbound
from ojs_amqp.amqp.pipe import ACK_METHOD, REJECT_METHOD


class RecordingSettler:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, list[int], int | None]] = []

    def settle(self, channel: Any, tags: list[int], method: int) -> None:
        self.calls.append(("settle", channel, list(tags), method))

    def discard(self, channel: Any, tag: int) -> None:
        self.calls.append(("discard", channel, [tag], None))


def _delivery() -> DeliveredMessage:
    props = Basic.Properties(
        message_id="job-1", message_type="email.send", reply_to="amq.rabbitmq.reply-to",
        correlation_id="c-1", content_type="application/openjobspec+json", priority=4,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC), headers={"x-ojs-copy": 3},
    )  # fmt: skip
    return DeliveredMessage(
        delivery=Basic.Deliver("ctag", 42, True, "ojs.exchange.direct", "mail"),
        header=ContentHeader(0, 2, props),
        body=b"{}",
        channel="the-channel",  # type: ignore[arg-type]
    )


def test_properties_and_routing_come_from_the_delivery() -> None:
    message = Inbound(_delivery(), RecordingSettler())  # type: ignore[arg-type]
    assert (message.body, message.delivery_tag, message.routing_key) == (b"{}", 42, "mail")
    assert message.redelivered is True
    assert message.message_id == "job-1" and message.type == "email.send"
    assert message.reply_to == "amq.rabbitmq.reply-to" and message.correlation_id == "c-1"
    assert message.content_type == "application/openjobspec+json" and message.priority == 4
    assert message.timestamp == datetime(2026, 1, 1, tzinfo=UTC)
    assert message.headers == {"x-ojs-copy": 3}


def test_a_delivery_is_settled_once_however_often_it_is_acked_or_rejected() -> None:
    settler = RecordingSettler()
    message = Inbound(_delivery(), settler)  # type: ignore[arg-type]
    message.ack()
    message.ack()
    message.reject(requeue=True)
    message.reject(requeue=False)
    assert settler.calls == [("settle", "the-channel", [42], ACK_METHOD)]
    assert message.settled


def test_reject_requeues_or_discards() -> None:
    requeued, discarded = RecordingSettler(), RecordingSettler()
    Inbound(_delivery(), requeued).reject(requeue=True)  # type: ignore[arg-type]
    Inbound(_delivery(), discarded).reject(requeue=False)  # type: ignore[arg-type]
    assert requeued.calls == [("settle", "the-channel", [42], REJECT_METHOD)]
    assert discarded.calls == [("discard", "the-channel", [42], None)]


def test_a_message_without_headers_reads_as_empty_headers() -> None:
    delivered = _delivery()
    delivered.header.properties.headers = None
    assert Inbound(delivered, RecordingSettler()).headers == {}  # type: ignore[arg-type]
