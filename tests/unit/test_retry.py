"""Retry policy defaults, backoff math, non-retryable matching and the failure decision."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ojs_amqp.core.retry import (
    MAX_DELAY_MS,
    Discard,
    FailureReport,
    Retry,
    RetryPolicy,
    backoff_delay_ms,
    decide_failure,
    matches_non_retryable,
)


def half() -> float:
    return 0.5


def no_jitter(**kwargs: object) -> RetryPolicy:
    return RetryPolicy(jitter=False, **kwargs)  # type: ignore[arg-type]


def formula(policy: RetryPolicy, n: int) -> float:
    i, c = float(policy.initial_interval_ms), policy.backoff_coefficient
    strategy = policy.backoff_strategy
    if strategy in ("none", "constant"):
        return i
    if strategy == "linear":
        return i * n
    if strategy == "polynomial":
        return i * float(n) ** c
    return i * c ** (n - 1)


# --- policy ---------------------------------------------------------------------------


def test_default_policy_matches_the_spec_defaults() -> None:
    p = RetryPolicy()
    assert (p.max_attempts, p.initial_interval_ms, p.backoff_coefficient) == (3, 1000, 2.0)
    assert (p.max_interval_ms, p.jitter, p.on_exhaustion) == (300_000, True, "discard")
    assert p.backoff_strategy == "exponential"
    assert p.non_retryable_errors == ()


def test_default_policy_has_no_problems() -> None:
    assert RetryPolicy().problems() == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": -1}, "max_attempts"),
        ({"initial_interval_ms": 0}, "initial_interval"),
        ({"backoff_coefficient": 0.99}, "backoff_coefficient"),
        ({"initial_interval_ms": 10_000, "max_interval_ms": 5000}, "max_interval"),
    ],
)
def test_each_policy_problem_names_its_field(kwargs: dict[str, object], field: str) -> None:
    problems = RetryPolicy(**kwargs).problems()  # type: ignore[arg-type]
    assert len(problems) == 1
    assert field in problems[0]


def test_max_attempts_zero_is_a_valid_policy() -> None:
    assert RetryPolicy(max_attempts=0).problems() == []


def test_policy_wire_form_uses_iso_durations() -> None:
    wire = RetryPolicy(non_retryable_errors=("auth.*",)).to_wire()
    assert wire == {
        "max_attempts": 3,
        "initial_interval": "PT1S",
        "backoff_coefficient": 2.0,
        "max_interval": "PT5M",
        "jitter": True,
        "non_retryable_errors": ["auth.*"],
        "on_exhaustion": "discard",
        "backoff_strategy": "exponential",
    }


# --- backoff: examples ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "delays"),
    [
        ("none", [1000, 1000, 1000, 1000]),
        ("constant", [1000, 1000, 1000, 1000]),
        ("linear", [1000, 2000, 3000, 4000]),
        ("exponential", [1000, 2000, 4000, 8000]),
        ("polynomial", [1000, 4000, 9000, 16000]),
    ],
)
def test_each_strategy_follows_its_formula(strategy: str, delays: list[int]) -> None:
    policy = no_jitter(backoff_strategy=strategy)
    assert [backoff_delay_ms(policy, n, half) for n in (1, 2, 3, 4)] == delays


def test_exponential_delay_is_capped_at_max_interval() -> None:
    policy = no_jitter(max_interval_ms=5000)
    assert backoff_delay_ms(policy, 10, half) == 5000


def test_retry_number_below_one_is_treated_as_the_first_retry() -> None:
    policy = no_jitter(backoff_strategy="linear")
    assert backoff_delay_ms(policy, 0, half) == backoff_delay_ms(policy, 1, half) == 1000


def test_jitter_factor_runs_from_half_to_one_and_a_half() -> None:
    policy = RetryPolicy()
    assert backoff_delay_ms(policy, 2, lambda: 0.0) == 1000
    assert backoff_delay_ms(policy, 2, half) == 2000
    assert backoff_delay_ms(policy, 2, lambda: 0.999) == 2998


def test_jitter_is_capped_at_max_interval_after_it_is_applied() -> None:
    policy = RetryPolicy(max_interval_ms=2500)
    assert backoff_delay_ms(policy, 2, lambda: 0.999) == 2500


def test_jitter_is_applied_to_the_already_capped_delay() -> None:
    policy = RetryPolicy(max_interval_ms=2000)
    # raw 8000 is capped to 2000 first, so the lowest jitter gives 1000, not 4000 -> 2000.
    assert backoff_delay_ms(policy, 4, lambda: 0.0) == 1000


def test_huge_exponential_retry_numbers_do_not_overflow() -> None:
    policy = no_jitter(backoff_coefficient=10.0, max_interval_ms=60_000)
    assert backoff_delay_ms(policy, 10_000, half) == 60_000


def test_huge_polynomial_coefficients_do_not_overflow() -> None:
    policy = no_jitter(backoff_strategy="polynomial", backoff_coefficient=500.0)
    assert backoff_delay_ms(policy, 10, half) == 300_000


def test_delay_never_exceeds_the_ten_year_ceiling() -> None:
    policy = no_jitter(max_interval_ms=MAX_DELAY_MS * 2, backoff_coefficient=10.0)
    assert backoff_delay_ms(policy, 500, half) == MAX_DELAY_MS


# --- backoff: properties ------------------------------------------------------------------


@st.composite
def policies(draw: st.DrawFn, jitter: bool | None = None) -> RetryPolicy:
    initial = draw(st.integers(min_value=1, max_value=1_000_000))
    return RetryPolicy(
        initial_interval_ms=initial,
        max_interval_ms=draw(st.integers(min_value=initial, max_value=10**10)),
        backoff_coefficient=draw(st.floats(min_value=1.0, max_value=10.0)),
        backoff_strategy=draw(
            st.sampled_from(["none", "constant", "linear", "exponential", "polynomial"])
        ),
        jitter=draw(st.booleans()) if jitter is None else jitter,
    )


retry_numbers = st.integers(min_value=1, max_value=60)
unit_floats = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(policies(), retry_numbers, unit_floats)
def test_delay_always_lies_between_zero_and_max_interval(
    policy: RetryPolicy, n: int, u: float
) -> None:
    assert 0 <= backoff_delay_ms(policy, n, lambda: u) <= policy.max_interval_ms


@given(policies(jitter=False), retry_numbers)
def test_delay_without_jitter_is_the_formula_capped_at_max_interval(
    policy: RetryPolicy, n: int
) -> None:
    expected = int(min(formula(policy, n), policy.max_interval_ms))
    assert backoff_delay_ms(policy, n, half) == expected


@given(policies(jitter=True), retry_numbers, unit_floats)
def test_jittered_delay_lies_within_half_and_one_and_a_half_of_the_capped_delay(
    policy: RetryPolicy, n: int, u: float
) -> None:
    d = min(formula(policy, n), policy.max_interval_ms)
    delay = backoff_delay_ms(policy, n, lambda: u)
    assert math.floor(0.5 * d) <= delay <= min(1.5 * d, policy.max_interval_ms)


@given(
    policies(jitter=False).filter(lambda p: p.backoff_strategy != "none"),
    st.integers(min_value=1, max_value=59),
)
def test_delay_without_jitter_never_shrinks_as_retries_go_on(policy: RetryPolicy, n: int) -> None:
    assert backoff_delay_ms(policy, n, half) <= backoff_delay_ms(policy, n + 1, half)


# --- non-retryable matching ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("ValidationError", "ValidationError", True),
        ("ValidationError", "ValidationErrorX", False),
        ("ValidationError", "validationerror", False),
        ("auth.*", "auth.x", True),
        ("auth.*", "auth.token.expired", True),
        ("auth.*", "auth", False),
        ("auth.*", "authz.x", False),
        ("auth.*", "oauth.x", False),
        ("foo*bar", "fooXbar", False),
        ("foo*bar", "foo*bar", True),
        ("*", "anything", False),
    ],
)
def test_non_retryable_patterns_match_exactly_or_by_dot_star_prefix(
    pattern: str, name: str, matches: bool
) -> None:
    assert matches_non_retryable((pattern,), [name]) is matches


def test_any_pattern_matching_any_name_is_enough() -> None:
    assert matches_non_retryable(("a", "b.*"), ["x", "b.y"])


def test_no_patterns_match_nothing() -> None:
    assert not matches_non_retryable((), ["anything"])


def test_report_names_are_code_type_and_error_class() -> None:
    report = FailureReport(code="c", type="t", details={"error_class": "E", "other": 1})
    assert report.names() == ["c", "t", "E"]


def test_report_names_skip_a_missing_type_and_a_non_string_error_class() -> None:
    assert FailureReport(code="c", details={"error_class": 3}).names() == ["c"]


# --- the failure decision -----------------------------------------------------------------


def test_failed_first_attempt_with_attempts_left_is_retried_after_the_backoff() -> None:
    assert decide_failure(RetryPolicy(), 1, FailureReport(), half) == Retry(delay_ms=1000)


def test_second_failure_waits_for_the_second_backoff_step() -> None:
    assert decide_failure(RetryPolicy(), 2, FailureReport(), half) == Retry(delay_ms=2000)


def test_failure_of_the_last_attempt_is_final() -> None:
    decision = decide_failure(RetryPolicy(max_attempts=3), 3, FailureReport(), half)
    assert decision == Discard(dead_letter=False, reason="exhausted")


def test_exhaustion_dead_letters_when_the_policy_says_so() -> None:
    policy = RetryPolicy(max_attempts=1, on_exhaustion="dead_letter")
    assert decide_failure(policy, 1, FailureReport(), half) == Discard(True, "exhausted")


@pytest.mark.parametrize("max_attempts", [0, 1])
def test_max_attempts_zero_behaves_like_one(max_attempts: int) -> None:
    policy = RetryPolicy(max_attempts=max_attempts)
    assert decide_failure(policy, 1, FailureReport(), half) == Discard(False, "exhausted")


def test_not_retryable_report_is_not_retried() -> None:
    report = FailureReport(retryable=False)
    assert decide_failure(RetryPolicy(), 1, report, half) == Discard(False, "non_retryable")


def test_explicitly_retryable_report_is_retried() -> None:
    # with the policy's backoff, as a report that says nothing about retrying
    for attempt, delay_ms in [(1, 1000), (2, 2000)]:
        report = FailureReport(retryable=True)
        assert decide_failure(RetryPolicy(), attempt, report, half) == Retry(delay_ms=delay_ms)


def test_non_retryable_error_type_is_not_retried() -> None:
    policy = RetryPolicy(non_retryable_errors=("auth.*",))
    report = FailureReport(code="handler_error", type="auth.denied")
    assert decide_failure(policy, 1, report, half) == Discard(False, "non_retryable")


def test_non_retryable_error_class_in_details_is_not_retried() -> None:
    policy = RetryPolicy(non_retryable_errors=("ValueError",), on_exhaustion="dead_letter")
    report = FailureReport(details={"error_class": "ValueError"})
    assert decide_failure(policy, 1, report, half) == Discard(True, "non_retryable")


def test_handler_dead_letter_action_dead_letters_even_with_attempts_left() -> None:
    report = FailureReport(action="DEAD_LETTER")
    assert decide_failure(RetryPolicy(), 1, report, half) == Discard(True, "handler_dead_letter")


@pytest.mark.parametrize("action", ["DISCARD", "FAIL", "discard", "fail"])
def test_handler_discard_and_fail_actions_discard_without_dead_letter(action: str) -> None:
    policy = RetryPolicy(on_exhaustion="dead_letter")
    report = FailureReport(action=action)
    assert decide_failure(policy, 1, report, half) == Discard(False, "handler_discard")


def test_handler_retry_action_retries_normally() -> None:
    # normally: the policy's backoff, and no retry once the attempts are used up
    policy = RetryPolicy(max_attempts=3)
    report = FailureReport(action="RETRY")
    assert decide_failure(policy, 1, report, half) == Retry(delay_ms=1000)
    assert decide_failure(policy, 2, report, half) == Retry(delay_ms=2000)
    assert decide_failure(policy, 3, report, half) == Discard(dead_letter=False, reason="exhausted")


@given(
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=0, max_value=40),
    st.booleans(),
    st.sampled_from([None, "RETRY", "DISCARD", "FAIL", "DEAD_LETTER"]),
    st.sampled_from([None, True, False]),
)
def test_failure_is_never_retried_once_attempts_are_used_up(
    max_attempts: int, attempt: int, jitter: bool, action: str | None, retryable: bool | None
) -> None:
    policy = RetryPolicy(max_attempts=max_attempts, jitter=jitter)
    decision = decide_failure(
        policy, attempt, FailureReport(action=action, retryable=retryable), half
    )
    if attempt >= max(1, max_attempts):
        assert isinstance(decision, Discard)
    elif action in (None, "RETRY") and retryable is not False:
        assert isinstance(decision, Retry)
        assert decision.delay_ms == backoff_delay_ms(policy, attempt, half)
