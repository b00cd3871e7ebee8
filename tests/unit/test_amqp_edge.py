"""aiormq's exceptions end at the amqp/ edge: what a publish's confirm fails with reaches the
daemon and the SDK's callers as one of the project's errors."""

from __future__ import annotations

import aiormq
import pytest
from pamqp.commands import Basic

from ojs_amqp.amqp.bounded import stalled
from ojs_amqp.amqp.pipe import confirmation_error
from ojs_amqp.errors import BackendUnavailable, OjsError, PublishRejected
from ojs_amqp.errors import TopologyMismatch as FromTheTree


@pytest.mark.parametrize(
    "raised",
    [
        aiormq.exceptions.ChannelInvalidStateError("the channel is closed"),
        aiormq.exceptions.AMQPConnectionError("Server connection unexpectedly closed"),
        aiormq.exceptions.ChannelClosed(406, "PRECONDITION_FAILED"),
        ConnectionResetError(104, "Connection reset by peer"),
        RuntimeError("writer is closed"),
    ],
)
def test_a_link_failure_under_a_publish_becomes_backend_unavailable(raised: Exception) -> None:
    error = confirmation_error(raised, "ex", "key")
    assert isinstance(error, BackendUnavailable)
    assert type(raised).__name__ in error.message


def test_a_nack_is_publish_rejected_and_our_own_errors_pass_through() -> None:
    nack = aiormq.exceptions.DeliveryError(None, Basic.Nack(delivery_tag=1))
    assert isinstance(confirmation_error(nack, "ex", "key"), PublishRejected)
    timeout = stalled("a publish confirm", 10)
    assert confirmation_error(timeout, "ex", "key") is timeout


def test_topology_mismatch_is_in_the_error_tree_and_still_importable_from_the_broker() -> None:
    from ojs_amqp.amqp.broker import TopologyMismatch

    assert TopologyMismatch is FromTheTree
    assert issubclass(TopologyMismatch, OjsError)
    assert TopologyMismatch("x").to_wire()["code"] == "backend_error"
