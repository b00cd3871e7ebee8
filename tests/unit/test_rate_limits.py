"""Rate limits: policy dialects, the GCRA pace, concurrency and the combined decision."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ojs_amqp.core.rate_limits import (
    Headers,
    KeyState,
    Verdict,
    decide,
    decide_all,
    headers,
    inspection,
    rebased,
    released,
)
from ojs_amqp.core.rate_policy import OnLimit, Pace, RatePolicy, parse_rate_limit, queue_key
from ojs_amqp.errors import InvalidRequest, ValidationFailed

T0 = 1_700_000_000_000

# --- policies ------------------------------------------------------------------------------


def test_the_suites_queue_dialect_limits_the_queue() -> None:
    policy = parse_rate_limit({"max_per_second": 5}, "emails")
    assert policy == RatePolicy(key="queue:emails", throttle=Pace(5, 1000, burst=1))
    assert queue_key("emails") == "queue:emails"
    keyed = parse_rate_limit({"key": "api", "max_per_second": 2}, "emails")
    assert (keyed.key, keyed.throttle) == ("api", Pace(2, 1000, burst=1))


def test_the_spec_dialect() -> None:
    raw = {
        "key": "api.partner.com",
        "concurrency": 10,
        "rate": {"limit": 500, "period": "PT1M"},
        "throttle": {"limit": 10, "period": "PT1S"},
        "on_limit": "reschedule",
    }
    policy = parse_rate_limit(raw, "q")
    assert policy.concurrency == 10
    assert policy.rate == Pace(500, 60_000, burst=500)
    assert policy.throttle == Pace(10, 1000, burst=1)
    assert policy.on_limit is OnLimit.RESCHEDULE
    assert policy.to_wire() == {
        "key": "api.partner.com", "on_limit": "reschedule", "concurrency": 10,
        "rate": {"limit": 500, "period": "PT1M"}, "throttle": {"limit": 10, "period": "PT1S"},
    }  # fmt: skip


def test_the_ext_suites_bare_rate_with_a_period_word() -> None:
    policy = parse_rate_limit({"key": "rl-rps-key", "rate": 1, "period": "second"}, "q")
    assert policy.rate == Pace(1, 1000, burst=1)
    assert parse_rate_limit({"key": "k", "rate": 3}, "q").rate == Pace(3, 1000, burst=3)
    assert parse_rate_limit({"key": "k", "concurrency": 0}, "q").concurrency == 0


def test_a_policy_without_a_limit_or_a_pace_out_of_range_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="sets no limit"):
        RatePolicy(key="k")
    with pytest.raises(ValueError, match="not a pace"):
        Pace(1, 1000, burst=2)


@pytest.mark.parametrize(
    ("raw", "error", "field"),
    [
        ([1], InvalidRequest, "rate_limit"),
        ({"concurrency": 1}, InvalidRequest, "rate_limit.key"),
        ({"key": "-bad", "concurrency": 1}, InvalidRequest, "rate_limit.key"),
        ({"key": "a b", "concurrency": 1}, InvalidRequest, "rate_limit.key"),
        ({"key": "k" * 256, "concurrency": 1}, InvalidRequest, "rate_limit.key"),
        ({"key": "k"}, InvalidRequest, "rate_limit"),
        ({"key": "k", "burst": 3}, InvalidRequest, "rate_limit.burst"),
        ({"key": "k", "concurrency": "2"}, InvalidRequest, "rate_limit.concurrency"),
        ({"key": "k", "concurrency": True}, InvalidRequest, "rate_limit.concurrency"),
        ({"key": "k", "concurrency": -1}, ValidationFailed, "rate_limit.concurrency"),
        ({"max_per_second": 0}, ValidationFailed, "rate_limit.max_per_second"),
        ({"max_per_second": 1.5}, InvalidRequest, "rate_limit.max_per_second"),
        ({"key": "k", "rate": {"limit": 5}}, InvalidRequest, "rate_limit.rate"),
        ({"key": "k", "rate": {"limit": 0, "period": "PT1S"}}, ValidationFailed,
         "rate_limit.rate.limit"),
        ({"key": "k", "rate": {"limit": 1, "period": "soon"}}, InvalidRequest,
         "rate_limit.rate.period"),
        ({"key": "k", "rate": {"limit": 1, "period": "PT0S"}}, ValidationFailed,
         "rate_limit.rate.period"),
        ({"key": "k", "throttle": 5}, InvalidRequest, "rate_limit.throttle"),
        ({"key": "k", "concurrency": 1, "period": "second"}, InvalidRequest,
         "rate_limit.period"),
        ({"key": "k", "concurrency": 1, "on_limit": "queue"}, InvalidRequest,
         "rate_limit.on_limit"),
        ({"max_per_second": 1, "throttle": {"limit": 1, "period": "PT1S"}}, InvalidRequest,
         "rate_limit.max_per_second"),
    ],
)  # fmt: skip
def test_invalid_policies_name_their_field(raw: Any, error: type, field: str) -> None:
    with pytest.raises(error) as caught:
        parse_rate_limit(raw, "q")
    assert caught.value.details["field"] == field


# --- decisions -----------------------------------------------------------------------------


def test_the_level_4_suites_three_fetches() -> None:
    """L4-RL-001: fetch 1 gets a job, fetch 2 at once gets none, fetch 3 1.5 s later one."""
    policy = parse_rate_limit({"max_per_second": 1}, "rate-limit-test")
    first = decide(policy, KeyState(), T0)
    assert first.verdict is Verdict.ADMIT
    second = decide(policy, first.state, T0 + 20)
    assert (second.verdict, second.blocked_by, second.retry_at_ms) == (
        Verdict.WAIT, "throttle", T0 + 1000)  # fmt: skip
    assert second.state == first.state
    assert second.headers == Headers(limit=1, remaining=0, reset_s=(T0 + 1000) // 1000)
    assert decide(policy, first.state, T0 + 1520).verdict is Verdict.ADMIT


def test_rate_allows_a_burst_then_paces() -> None:
    policy = RatePolicy(key="k", rate=Pace(3, 3000, burst=3))
    state, admitted = KeyState(), 0
    for _ in range(5):
        decision = decide(policy, state, T0)
        if decision.verdict is Verdict.ADMIT:
            admitted += 1
            state = decision.state
    assert admitted == 3
    assert decide(policy, state, T0 + 999).verdict is Verdict.WAIT
    assert decide(policy, state, T0 + 1000).verdict is Verdict.ADMIT


def test_on_limit_verdicts() -> None:
    paced = RatePolicy(key="k", throttle=Pace(1, 1000, 1), on_limit=OnLimit.RESCHEDULE)
    used = decide(paced, KeyState(), T0).state
    assert decide(paced, used, T0).verdict is Verdict.RESCHEDULE
    dropping = RatePolicy(key="k", throttle=Pace(1, 1000, 1), on_limit=OnLimit.DROP)
    assert decide(dropping, used, T0).verdict is Verdict.DROP
    # A concurrency slot has no known free time: reschedule waits for the release instead.
    busy = RatePolicy(key="k", concurrency=1, on_limit=OnLimit.RESCHEDULE)
    blocked = decide(busy, KeyState(active=1), T0)
    assert (blocked.verdict, blocked.retry_at_ms, blocked.blocked_by) == (
        Verdict.WAIT, None, "concurrency")  # fmt: skip
    assert blocked.headers == Headers(limit=1, remaining=0, reset_s=None)
    closed = RatePolicy(key="k", concurrency=0)
    assert decide(closed, KeyState(), T0).verdict is Verdict.WAIT


def test_concurrency_counts_and_releases() -> None:
    policy = RatePolicy(key="k", concurrency=2)
    one = decide(policy, KeyState(), T0).state
    two = decide(policy, one, T0).state
    assert two.active == 2
    assert decide(policy, two, T0).verdict is Verdict.WAIT
    assert decide(policy, released(two), T0).verdict is Verdict.ADMIT
    assert released(KeyState()) == KeyState()


def test_a_live_change_to_a_faster_pace_does_not_keep_the_old_wait() -> None:
    slow = RatePolicy(key="k", throttle=Pace(1, 60_000, 1))
    state = decide(slow, KeyState(), T0).state
    fast = RatePolicy(key="k", throttle=Pace(10, 1000, 1))
    assert decide(fast, state, T0 + 50_000).verdict is Verdict.WAIT  # not rebased: old wait
    state = rebased(fast, state, T0 + 50)
    assert state.throttle_tat_ms == T0 + 150
    assert decide(fast, state, T0 + 100).verdict is Verdict.WAIT
    assert decide(fast, state, T0 + 150).verdict is Verdict.ADMIT
    assert rebased(fast, KeyState(throttle_tat_ms=T0), T0) == KeyState(throttle_tat_ms=T0)


def test_headers_of_a_push_use_no_token() -> None:
    """EXT-RL-004 expects X-RateLimit-Limit on enqueue: a peek at the key's state."""
    policy = parse_rate_limit({"key": "rl-rps-key", "rate": 1, "period": "second"}, "q")
    shown = headers(policy, KeyState(), T0).to_http()
    assert shown == {
        "X-RateLimit-Limit": "1", "X-RateLimit-Remaining": "1",
        "X-RateLimit-Reset": str(T0 // 1000),
    }  # fmt: skip
    both = RatePolicy(key="k", concurrency=5, throttle=Pace(1, 1000, 1))
    after = decide(both, KeyState(), T0).state
    assert headers(both, after, T0) == Headers(limit=1, remaining=0, reset_s=(T0 + 1000) // 1000)


def test_all_limits_must_admit_and_nothing_is_taken_otherwise() -> None:
    job = RatePolicy(key="api", concurrency=5)
    queue = RatePolicy(key="queue:q", throttle=Pace(1, 1000, 1))
    first = decide_all([job, queue], {}, T0)
    assert first.verdict is Verdict.ADMIT
    assert first.states == {
        "api": KeyState(active=1),
        "queue:q": KeyState(throttle_tat_ms=T0 + 1000),
    }
    second = decide_all([job, queue], first.states, T0 + 10)
    assert (second.verdict, second.retry_at_ms) == (Verdict.WAIT, T0 + 1000)
    assert second.states == first.states  # the job's slot was not taken either
    dropping = RatePolicy(key="queue:q", throttle=Pace(1, 1000, 1), on_limit=OnLimit.DROP)
    full = RatePolicy(key="api", concurrency=0)
    combined = decide_all([dropping, full], first.states, T0 + 10)
    assert (combined.verdict, combined.retry_at_ms) == (Verdict.WAIT, None)
    shared = decide_all([job, job], {}, T0)  # one key named twice counts twice
    assert shared.states["api"].active == 2


def test_inspection_shape() -> None:
    policy = RatePolicy(
        key="stripe-api", concurrency=5, rate=Pace(100, 60_000, 100), throttle=Pace(10, 1000, 1)
    )
    state = decide(policy, KeyState(), T0).state
    seen = inspection(policy, state, T0, waiting=12)
    assert seen["key"] == "stripe-api"
    assert seen["concurrency"] == {"limit": 5, "active": 1, "available": 4}
    assert (seen["rate"]["limit"], seen["rate"]["remaining"], seen["rate"]["current_count"]) == (
        100, 99, 1)  # fmt: skip
    assert seen["throttle"]["next_allowed_at"].endswith("Z")
    assert seen["waiting_count"] == 12


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=3000))
def test_max_per_second_5_never_admits_more_than_6_in_any_second(gaps: list[int]) -> None:
    """Workers fetching hard (gaps of 0-40 ms) over up to 30 s."""
    policy = parse_rate_limit({"max_per_second": 5}, "q")
    state, now, admitted = KeyState(), T0, []
    for gap in gaps:
        now += gap
        decision = decide(policy, state, now)
        # It never starves either: a fetch is refused only within 200 ms of the last start.
        due = not admitted or now >= admitted[-1] + 200
        assert (decision.verdict is Verdict.ADMIT) == due
        if decision.verdict is Verdict.ADMIT:
            admitted.append(now)
            state = decision.state
    for i, start in enumerate(admitted):
        in_window = sum(1 for t in admitted[i:] if t <= start + 1000)
        assert in_window <= 6


def test_max_per_second_5_over_30_seconds_of_constant_fetching() -> None:
    policy = parse_rate_limit({"max_per_second": 5}, "q")
    state, admitted = KeyState(), []
    for now in range(T0, T0 + 30_000):
        decision = decide(policy, state, now)
        if decision.verdict is Verdict.ADMIT:
            admitted.append(now)
            state = decision.state
    assert len(admitted) == 150
    assert max(sum(1 for t in admitted if s <= t <= s + 1000) for s in admitted) <= 6


@given(st.integers(0, 4), st.lists(st.tuples(st.booleans(), st.integers(0, 10)), max_size=200))
def test_concurrency_never_exceeds_its_limit(limit: int, steps: list[tuple[bool, int]]) -> None:
    """Any interleaving of fetches and releases (acks, failures, expiries)."""
    policy = RatePolicy(key="k", concurrency=limit)
    state, running = KeyState(), 0
    for fetch, _ in steps:
        if fetch:
            decision = decide(policy, state, T0)
            if decision.verdict is Verdict.ADMIT:
                running += 1
            else:
                assert running == limit  # refused only when full
            state = decision.state
        elif running:
            running -= 1
            state = released(state)
        assert state.active == running <= limit
