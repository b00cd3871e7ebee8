"""Which declare errors are worth another try: only RabbitMQ 4.0's answer to two connections
declaring one new classic queue at once."""

from __future__ import annotations

import aiormq

from ojs_amqp.amqp.failures import is_declare_race


def test_the_home_node_answer_to_a_concurrent_declare_is_a_race() -> None:
    exc = aiormq.exceptions.ChannelNotFoundEntity(
        "NOT_FOUND - home node 'rabbit@host' of durable queue 'p.ojs.queue.dlx.q' in vhost '/' "
        "is down or inaccessible"
    )
    assert is_declare_race(exc)


def test_a_missing_exchange_is_not_a_race() -> None:
    exc = aiormq.exceptions.ChannelNotFoundEntity(
        "NOT_FOUND - no exchange 'p.ojs.dlx' in vhost '/'"
    )
    assert not is_declare_race(exc)


def test_other_errors_with_the_same_words_are_not_a_race() -> None:
    assert not is_declare_race(RuntimeError("is down or inaccessible"))
