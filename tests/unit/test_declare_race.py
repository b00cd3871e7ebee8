"""Which declare errors are worth another try: only RabbitMQ 4.0's answer to two connections
declaring one new classic queue at once."""

from __future__ import annotations

import aiormq
import pytest

from ojs_amqp.amqp.failures import (
    DECLARE_RACE_RETRY_DELAYS_S,
    is_declare_race,
    through_declare_races,
)


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


async def test_a_declare_that_races_is_tried_again_and_any_other_error_ends_it() -> None:
    race = aiormq.exceptions.ChannelNotFoundEntity("NOT_FOUND - home node is down or inaccessible")
    tries: list[int] = []
    races: list[float] = []

    async def declare() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise race

    async def on_race(delay: float) -> None:
        races.append(delay)

    await through_declare_races(declare, on_race)
    assert len(tries) == 3 and races == list(DECLARE_RACE_RETRY_DELAYS_S[:2])

    async def missing_exchange() -> None:
        raise aiormq.exceptions.ChannelNotFoundEntity("NOT_FOUND - no exchange 'x'")

    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await through_declare_races(missing_exchange, on_race)
    assert len(races) == 2  # not a race: no second try
