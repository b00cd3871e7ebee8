"""Priority: numeric and named values, one ordering, and the native broker mapping."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ojs_amqp.amqp.codec import amqp_priority
from ojs_amqp.core import envelope
from ojs_amqp.core.priority import (
    NAMED,
    PRIORITY_RANGE,
    amqp_bucket,
    declare_mismatch,
    native_plan,
    order_key,
    parse_broker_version,
    parse_priority,
)
from ojs_amqp.errors import InvalidRequest


@pytest.mark.parametrize(
    ("value", "number"),
    [(10, 10), (-100, -100), (100, 100), ("HIGH", 10), ("normal", 0), (" Low ", -10)],
)
def test_valid_priorities(value: Any, number: int) -> None:
    assert parse_priority(value) == number


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (101, "out of range"),
        (-101, "out of range"),
        (True, "boolean"),
        ("CRITICAL", "not a level name"),
        ("10", "not a level name"),
        (1.5, "integer"),
        (None, "integer"),
    ],
)
def test_invalid_priorities_are_400(value: Any, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_priority(value, "options.priority")
    assert caught.value.http_status == 400
    assert caught.value.details == {"field": "options.priority"}
    assert words in caught.value.message


def test_names_and_range_agree_with_the_core_and_the_envelope() -> None:
    assert NAMED == {"HIGH": 10, "NORMAL": 0, "LOW": -10}
    assert PRIORITY_RANGE == envelope.PRIORITY_RANGE


@given(st.lists(st.integers(-100, 100), min_size=1, max_size=50))
def test_order_is_higher_first_then_fifo(priorities: list[int]) -> None:
    placed = list(enumerate(priorities))
    handed = sorted(placed, key=lambda pair: order_key(pair[1], pair[0]))
    for (place_a, prio_a), (place_b, prio_b) in itertools.pairwise(handed):
        assert prio_a > prio_b or (prio_a == prio_b and place_a < place_b)


@given(st.integers(-100, 100), st.integers(-100, 100))
def test_buckets_never_invert_the_order(a: int, b: int) -> None:
    if a > b:
        assert amqp_bucket(a) >= amqp_bucket(b)
    assert 0 <= amqp_bucket(a) <= 9


def test_buckets_are_what_every_publish_carries_today() -> None:
    assert all(amqp_bucket(p) == amqp_priority(p) for p in range(-100, 101))
    named = [amqp_bucket(p) for p in (10, 0, -10)] + [amqp_bucket(p) for p in (3, 2, 1)]
    assert len(set(named)) == len(named)


def test_native_plans_by_broker_version() -> None:
    classic = native_plan(parse_broker_version("3.10.7"))
    assert (classic.queue_type, classic.arguments, classic.levels, classic.strict) == (
        "classic", {"x-max-priority": 9}, 10, True)  # fmt: skip
    assert [classic.broker_level(p) for p in (10, 0, -10)] == [8, 4, 2]
    two = native_plan(parse_broker_version("4.0.5"))
    assert (two.queue_type, two.arguments, two.levels, two.strict) == ("quorum", {}, 2, False)
    assert [two.broker_level(p) for p in (100, 1, 0, -100)] == [1, 1, 0, 0]
    strict = native_plan((4, 3))
    assert (strict.queue_type, strict.levels, strict.strict) == ("quorum", 10, True)
    with pytest.raises(ValueError, match="not a RabbitMQ version"):
        parse_broker_version("x.y")
    assert parse_broker_version("4") == (4, 0)


def test_an_existing_queue_of_another_kind_gets_a_migration_not_a_redeclare() -> None:
    classic = native_plan((3, 10))
    assert declare_mismatch(classic, "jobs", "classic", 9) is None
    message = declare_mismatch(classic, "jobs", "quorum", None)
    assert message is not None
    assert "exists as a quorum queue" in message and "classic with x-max-priority 9" in message
    assert "cannot convert" in message and "queues delete" in message
    assert declare_mismatch(classic, "jobs", "classic", 5) is not None
    assert declare_mismatch(native_plan((4, 0)), "jobs", "quorum", None) is None
