import pytest

from ojs_amqp.amqp.broker import backoff_seconds
from ojs_amqp.amqp.topology import (
    HOLD_THRESHOLD_MS,
    LADDER_LEVELS,
    LADDER_UNIT_MS,
    Topology,
    ladder_level_for,
    ladder_wait_ms,
)


def test_names_follow_the_binding_without_a_prefix() -> None:
    t = Topology()
    assert t.direct_exchange == "ojs.exchange.direct"
    assert t.dlx_exchange == "ojs.exchange.dlx"
    assert t.job_queue("email") == "ojs.queue.email"
    assert t.dead_letter_queue("email") == "ojs.queue.dlx.email"
    assert t.ladder_queue(3) == "ojs.delay.L03"


def test_a_prefix_goes_in_front_of_every_name() -> None:
    t = Topology("acme")
    assert t.job_queue("email") == "acme.ojs.queue.email"
    assert all(name.startswith("acme.") for name in t.all_fixed_queues())


def test_job_queues_are_quorum_with_at_least_once_dead_lettering_to_the_dlx() -> None:
    args = Topology("p").job_queue_arguments("email")
    assert args == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "p.ojs.exchange.dlx",
        "x-dead-letter-routing-key": "email",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_ladder_levels_wait_powers_of_two_seconds_and_dead_letter_to_due() -> None:
    t = Topology()
    for level in range(LADDER_LEVELS):
        args = t.ladder_queue_arguments(level)
        assert args["x-message-ttl"] == LADDER_UNIT_MS * 2**level
        assert args["x-dead-letter-exchange"] == t.delay_exchange
        assert args["x-dead-letter-strategy"] == "at-least-once"
    assert ladder_wait_ms(LADDER_LEVELS - 1) >= 365 * 86_400_000


@pytest.mark.parametrize("remaining", [-5, 0, 1, 999, HOLD_THRESHOLD_MS])
def test_short_remainders_are_held_by_the_daemon(remaining: int) -> None:
    assert ladder_level_for(remaining) is None


@pytest.mark.parametrize("remaining", [HOLD_THRESHOLD_MS + 1, 3000, 10_000, 86_400_000, 10**12])
def test_a_hop_never_outlasts_the_remainder_minus_one_unit(remaining: int) -> None:
    level = ladder_level_for(remaining)
    assert level is not None
    assert ladder_wait_ms(level) <= remaining - LADDER_UNIT_MS
    if level < LADDER_LEVELS - 1:
        # and it is the longest such hop: the next level would overshoot
        assert ladder_wait_ms(level + 1) > remaining - LADDER_UNIT_MS


def test_reconnect_backoff_doubles_from_one_second_to_sixty_with_a_quarter_jitter() -> None:
    # AMQP-025: 1, 2, 4, … min(2^(N-1), 60) s, ±25 %
    assert [backoff_seconds(n, rng=lambda: 0.5) for n in (1, 2, 3, 6, 7, 20)] == [
        1.0, 2.0, 4.0, 32.0, 60.0, 60.0,
    ]  # fmt: skip
    assert backoff_seconds(3, rng=lambda: 0.0) == 3.0
    assert backoff_seconds(3, rng=lambda: 1.0) == 5.0
