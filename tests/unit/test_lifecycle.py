"""The closed transition table and the pure moves between the eight OJS states."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from ojs_amqp.core import lifecycle
from ojs_amqp.core.job import MISSING, Job, JobState
from ojs_amqp.core.lifecycle import MAX_ERROR_HISTORY, TRANSITIONS, Move, check
from ojs_amqp.core.retry import FailureReport, RetryPolicy
from ojs_amqp.core.times import format_ms
from ojs_amqp.errors import Conflict, InvalidTransition

S = JobState
T0 = 1_700_000_000_000
NOW = T0 + 60_000


def rng() -> float:
    return 0.5


def make_job(state: JobState = S.AVAILABLE, **changes: Any) -> Job:
    job = Job(
        id="0190a5b8-3c4d-7e5f-8a6b-1c2d3e4f5a6b",
        type="email.send",
        queue="default",
        args=[{"to": "a@example.com"}],
        state=state,
        created_at_ms=T0,
        enqueued_at_ms=T0,
    )
    return replace(job, **changes)


def active(**changes: Any) -> Job:
    defaults: dict[str, Any] = {"attempt": 1, "started_at_ms": T0, "worker_id": "w-1"}
    return make_job(S.ACTIVE, **{**defaults, **changes})


#: Every move, driven the way the engine drives it.
MOVES: dict[Move, Callable[[Job], Job]] = {
    Move.FETCH: lambda j: lifecycle.fetch(j, NOW, "w-1"),
    Move.ACK: lambda j: lifecycle.ack(j, NOW, {"ok": True}),
    Move.FAIL: lambda j: lifecycle.fail(j, NOW, FailureReport(message="boom"), rng),
    Move.CANCEL: lambda j: lifecycle.cancel(j, NOW),
    Move.ACTIVATE: lambda j: lifecycle.activate(j, NOW),
    Move.TIMER_DUE: lambda j: lifecycle.timer_due(j, NOW),
    Move.LEASE_EXPIRED: lambda j: lifecycle.lease_expired(j, NOW, "visibility", rng),
    Move.REQUEUE: lambda j: lifecycle.requeue(j, NOW),
    Move.EXPIRE: lambda j: lifecycle.expire(j, NOW),
    Move.RETRY_DEAD_LETTER: lambda j: lifecycle.retry_dead_letter(j, NOW),
    Move.WORKER_DISCARD: lambda j: lifecycle.worker_discard(j, NOW, "bad payload"),
    Move.WORKER_LOST: lambda j: lifecycle.worker_lost(j, NOW, "w-2", 1),
}

#: The spec's state machine, written out independently of the implementation.
EXPECTED = {
    (S.AVAILABLE, Move.FETCH): {S.ACTIVE},
    (S.ACTIVE, Move.ACK): {S.COMPLETED},
    (S.ACTIVE, Move.FAIL): {S.RETRYABLE, S.DISCARDED},
    (S.ACTIVE, Move.LEASE_EXPIRED): {S.AVAILABLE, S.DISCARDED},
    (S.ACTIVE, Move.REQUEUE): {S.AVAILABLE},
    (S.ACTIVE, Move.WORKER_DISCARD): {S.DISCARDED},
    (S.ACTIVE, Move.WORKER_LOST): {S.ACTIVE, S.DISCARDED},
    (S.PENDING, Move.ACTIVATE): {S.AVAILABLE},
    (S.SCHEDULED, Move.TIMER_DUE): {S.AVAILABLE},
    (S.RETRYABLE, Move.TIMER_DUE): {S.AVAILABLE},
    (S.DISCARDED, Move.RETRY_DEAD_LETTER): {S.AVAILABLE},
    **{(s, Move.CANCEL): {S.CANCELLED} for s in S if not s.terminal},
    **{(s, Move.EXPIRE): {S.DISCARDED} for s in (S.SCHEDULED, S.AVAILABLE, S.PENDING, S.RETRYABLE)},
}

ALL_PAIRS = list(itertools.product(S, Move))


# --- the table ----------------------------------------------------------------------------


def test_there_are_eight_states_and_three_are_terminal() -> None:
    assert len(S) == 8
    assert {s for s in S if s.terminal} == {S.COMPLETED, S.CANCELLED, S.DISCARDED}


def test_transition_table_is_exactly_the_spec_state_machine() -> None:
    assert {k: set(v) for k, v in TRANSITIONS.items()} == EXPECTED


def test_every_move_has_a_driver_in_these_tests() -> None:
    assert set(MOVES) == set(Move)


def test_completed_and_cancelled_jobs_allow_no_move_at_all() -> None:
    assert not [k for k in TRANSITIONS if k[0] in (S.COMPLETED, S.CANCELLED)]


def test_only_a_manual_retry_leaves_the_discarded_state() -> None:
    assert [m for (s, m) in TRANSITIONS if s is S.DISCARDED] == [Move.RETRY_DEAD_LETTER]


def test_every_non_terminal_state_can_be_cancelled() -> None:
    for state in S:
        assert ((state, Move.CANCEL) in TRANSITIONS) is (not state.terminal)


@pytest.mark.parametrize(("state", "move"), ALL_PAIRS, ids=lambda x: str(x))
def test_check_allows_exactly_the_pairs_in_the_table(state: JobState, move: Move) -> None:
    job = make_job(state)
    if (state, move) in TRANSITIONS:
        assert check(job, move) == TRANSITIONS[(state, move)]
    else:
        with pytest.raises(InvalidTransition) as info:
            check(job, move)
        assert info.value.details == {
            "job_id": job.id,
            "current_state": state.value,
            "operation": move.value,
        }


@pytest.mark.parametrize(("state", "move"), ALL_PAIRS, ids=lambda x: str(x))
def test_each_move_function_lands_in_an_allowed_state_or_refuses(
    state: JobState, move: Move
) -> None:
    job = make_job(state, attempt=1)
    before = copy.deepcopy(job)
    if (state, move) in TRANSITIONS:
        assert MOVES[move](job).state in TRANSITIONS[(state, move)]
    else:
        with pytest.raises(InvalidTransition):
            MOVES[move](job)
    assert job == before


def test_invalid_transition_is_a_409_conflict() -> None:
    err = InvalidTransition("j", "completed", "cancel")
    assert isinstance(err, Conflict)
    assert err.http_status == 409
    assert err.code == "conflict"
    assert "completed" in err.message and "cancel" in err.message


# --- fetch / ack --------------------------------------------------------------------------


def test_fetch_makes_the_job_active_and_spends_an_attempt() -> None:
    job = lifecycle.fetch(make_job(attempt=0), NOW, "w-9")
    assert (job.state, job.attempt, job.started_at_ms, job.worker_id) == (S.ACTIVE, 1, NOW, "w-9")


def test_fetch_does_not_publish_a_new_copy() -> None:
    assert lifecycle.fetch(make_job(), NOW, None).copy == 1


def test_ack_completes_the_job_with_its_result() -> None:
    job = lifecycle.ack(active(error={"code": "x"}), NOW, {"n": 1})
    assert (job.state, job.completed_at_ms, job.result) == (S.COMPLETED, NOW, {"n": 1})
    assert job.error is None


def test_ack_without_a_result_leaves_the_result_missing() -> None:
    assert lifecycle.ack(active(), NOW).result is MISSING


def test_ack_with_a_null_result_keeps_the_null() -> None:
    assert lifecycle.ack(active(), NOW, None).result is None


# --- fail ---------------------------------------------------------------------------------


def test_failed_job_with_attempts_left_becomes_retryable() -> None:
    job = lifecycle.fail(active(), NOW, FailureReport(message="boom"), rng)
    assert job.state is S.RETRYABLE
    assert job.retry_delay_ms == 1000
    assert job.next_attempt_at_ms == NOW + 1000


def test_retry_delay_follows_the_attempt_number() -> None:
    job = lifecycle.fail(active(attempt=2), NOW, FailureReport(), rng)
    assert job.retry_delay_ms == 2000


def test_failure_is_appended_to_the_error_history_with_attempt_and_time() -> None:
    old = {"code": "old", "attempt": 1}
    job = lifecycle.fail(
        active(attempt=2, errors=[old]), NOW, FailureReport(code="e", message="boom"), rng
    )
    assert job.errors[0] == old
    assert job.errors[-1] == {
        "code": "e",
        "type": "e",
        "message": "boom",
        "attempt": 2,
        "occurred_at": format_ms(NOW),
    }
    assert job.error == job.errors[-1]


def test_error_entry_takes_type_from_the_report_then_error_class_then_code() -> None:
    typed = lifecycle.fail(active(), NOW, FailureReport(code="c", type="T"), rng)
    classed = lifecycle.fail(active(), NOW, FailureReport(details={"error_class": "K"}), rng)
    assert typed.error is not None and typed.error["type"] == "T"
    assert classed.error is not None and classed.error["type"] == "K"
    assert classed.error["details"] == {"error_class": "K"}


def test_error_history_is_bounded() -> None:
    history = [{"code": str(i)} for i in range(MAX_ERROR_HISTORY)]
    job = lifecycle.fail(active(errors=history), NOW, FailureReport(code="new"), rng)
    assert len(job.errors) == MAX_ERROR_HISTORY >= 10
    assert job.errors[0] == {"code": "1"}
    assert job.errors[-1]["code"] == "new"


def test_failure_publishes_a_new_copy_and_releases_the_worker() -> None:
    job = lifecycle.fail(active(copy=4), NOW, FailureReport(), rng)
    assert (job.copy, job.worker_id) == (5, None)


def test_failure_of_the_last_attempt_discards_the_job() -> None:
    job = lifecycle.fail(active(attempt=3), NOW, FailureReport(), rng)
    assert job.state is S.DISCARDED
    assert (job.discarded_at_ms, job.completed_at_ms) == (NOW, NOW)
    assert job.next_attempt_at_ms is None
    assert job.dead_letter is False
    assert job.errors[-1]["attempt"] == 3


def test_exhausted_job_is_dead_lettered_when_the_policy_says_so() -> None:
    policy = RetryPolicy(max_attempts=1, on_exhaustion="dead_letter")
    job = lifecycle.fail(active(retry=policy), NOW, FailureReport(), rng)
    assert (job.state, job.dead_letter) == (S.DISCARDED, True)


def test_handler_dead_letter_action_discards_to_the_dead_letter_list() -> None:
    job = lifecycle.fail(active(), NOW, FailureReport(action="DEAD_LETTER"), rng)
    assert (job.state, job.dead_letter) == (S.DISCARDED, True)


def test_discard_clears_a_pending_retry_time() -> None:
    job = lifecycle.fail(active(attempt=3, next_attempt_at_ms=T0), NOW, FailureReport(), rng)
    assert job.next_attempt_at_ms is None


# --- lease expiry -------------------------------------------------------------------------


def test_visibility_timeout_puts_the_job_straight_back_to_available() -> None:
    job = lifecycle.lease_expired(active(copy=2), NOW, "visibility", rng)
    assert (job.state, job.enqueued_at_ms, job.worker_id, job.copy) == (S.AVAILABLE, NOW, None, 3)
    assert job.attempt == 1
    assert job.errors[-1]["code"] == "visibility_timeout"
    assert job.errors[-1]["attempt"] == 1


def test_a_visibility_timeout_on_the_last_attempt_discards_the_job() -> None:
    # Given a job on its second and last attempt, with one visibility timeout behind it
    first = lifecycle.lease_expired(active(copy=1), NOW, "visibility", rng)
    job = lifecycle.fetch(first, NOW + 10, "w-2")
    policy = RetryPolicy(max_attempts=2)
    job = replace(job, retry=policy)
    # When its lease lapses again
    job = lifecycle.lease_expired(job, NOW + 20, "visibility", rng)
    # Then the attempts are spent: discarded (not a dead letter, the default), both
    # timeouts in its history, nothing left to wait for
    assert (job.state, job.attempt, job.dead_letter) == (S.DISCARDED, 2, False)
    assert [(e["code"], e["attempt"]) for e in job.errors] == [
        ("visibility_timeout", 1), ("visibility_timeout", 2),
    ]  # fmt: skip
    assert job.discarded_at_ms == NOW + 20 and job.worker_id is None
    assert job.next_attempt_at_ms is None


def test_an_exhausted_visibility_timeout_dead_letters_under_a_dead_letter_policy() -> None:
    policy = RetryPolicy(max_attempts=1, on_exhaustion="dead_letter")
    job = lifecycle.lease_expired(active(retry=policy), NOW, "visibility", rng)
    assert (job.state, job.dead_letter) == (S.DISCARDED, True)
    assert job.error is not None and job.error["code"] == "visibility_timeout"


@pytest.mark.parametrize("max_attempts", [0, 1])
def test_a_job_with_at_most_one_attempt_is_discarded_on_its_first_visibility_timeout(
    max_attempts: int,
) -> None:
    job = active(retry=RetryPolicy(max_attempts=max_attempts))
    assert lifecycle.lease_expired(job, NOW, "visibility", rng).state is S.DISCARDED


def test_a_visibility_timeout_ignores_non_retryable_errors() -> None:
    # ojs-retry §9.2: a timeout is always retryable while attempts remain
    policy = RetryPolicy(max_attempts=3, non_retryable_errors=("visibility_timeout",))
    job = lifecycle.lease_expired(active(retry=policy), NOW, "visibility", rng)
    assert job.state is S.AVAILABLE


def test_a_lost_native_attempt_starts_the_next_one_on_the_same_copy() -> None:
    job = lifecycle.worker_lost(active(copy=4, retry=RetryPolicy(max_attempts=3)), NOW, "w-2", 1)
    assert (job.state, job.attempt, job.copy, job.worker_id) == (S.ACTIVE, 2, 4, "w-2")
    assert job.started_at_ms == NOW
    assert job.errors[-1]["code"] == "worker_lost" and job.errors[-1]["attempt"] == 1
    assert job.errors[-1]["details"] == {"delivery_count": 1}


def test_a_lost_last_native_attempt_applies_on_exhaustion() -> None:
    policy = RetryPolicy(max_attempts=2, on_exhaustion="dead_letter")
    job = lifecycle.worker_lost(active(attempt=2, copy=4, retry=policy), NOW, "w-3", 2)
    assert (job.state, job.dead_letter, job.copy, job.attempt) == (S.DISCARDED, True, 5, 2)
    assert job.error is not None and job.error["code"] == "worker_lost"


def test_execution_timeout_counts_as_a_failed_attempt() -> None:
    job = lifecycle.lease_expired(active(), NOW, "timeout", rng)
    assert job.state is S.RETRYABLE
    assert job.error is not None and job.error["code"] == "timeout"
    assert job.next_attempt_at_ms == NOW + 1000


def test_execution_timeout_of_the_last_attempt_discards_the_job() -> None:
    job = lifecycle.lease_expired(active(attempt=3), NOW, "timeout", rng)
    assert job.state is S.DISCARDED


@pytest.mark.parametrize("kind", ["visibility", "timeout"])
@pytest.mark.parametrize("state", [s for s in S if s is not S.ACTIVE])
def test_only_an_active_job_can_have_its_lease_expire(state: JobState, kind: str) -> None:
    with pytest.raises(InvalidTransition):
        lifecycle.lease_expired(make_job(state), NOW, kind, rng)


# --- requeue, cancel, activate, timer -----------------------------------------------------


def test_requeue_gives_the_attempt_back() -> None:
    job = lifecycle.requeue(active(attempt=2, copy=3), NOW)
    assert (job.state, job.attempt, job.enqueued_at_ms) == (S.AVAILABLE, 1, NOW)
    assert (job.worker_id, job.copy) == (None, 4)


def test_requeue_never_makes_the_attempt_negative() -> None:
    assert lifecycle.requeue(active(attempt=0), NOW).attempt == 0


def test_fetch_then_requeue_leaves_the_attempt_count_unchanged() -> None:
    job = make_job(attempt=1)
    assert lifecycle.requeue(lifecycle.fetch(job, NOW, "w"), NOW).attempt == 1


@pytest.mark.parametrize("state", [s for s in S if not s.terminal])
def test_cancel_sets_cancelled_at_and_publishes_a_new_copy(state: JobState) -> None:
    job = lifecycle.cancel(make_job(state), NOW)
    assert (job.state, job.cancelled_at_ms, job.copy) == (S.CANCELLED, NOW, 2)


def test_activate_makes_a_pending_job_available() -> None:
    job = lifecycle.activate(make_job(S.PENDING, enqueued_at_ms=None), NOW)
    assert (job.state, job.activated_at_ms, job.enqueued_at_ms, job.copy) == (
        S.AVAILABLE,
        NOW,
        NOW,
        2,
    )


@pytest.mark.parametrize("state", [S.SCHEDULED, S.RETRYABLE])
def test_timer_due_makes_a_waiting_job_available(state: JobState) -> None:
    job = lifecycle.timer_due(make_job(state, attempt=1), NOW)
    assert (job.state, job.enqueued_at_ms, job.copy, job.attempt) == (S.AVAILABLE, NOW, 2, 1)


# --- expire, worker discard, dead-letter retry --------------------------------------------


@pytest.mark.parametrize("state", [S.SCHEDULED, S.AVAILABLE, S.PENDING, S.RETRYABLE])
def test_expired_job_is_discarded_without_a_completed_at(state: JobState) -> None:
    job = lifecycle.expire(make_job(state), NOW)
    assert (job.state, job.discarded_at_ms, job.dead_letter) == (S.DISCARDED, NOW, False)
    assert job.completed_at_ms is None
    assert job.error is not None and job.error["code"] == "expired"
    assert job.copy == 2


def test_an_active_job_cannot_expire() -> None:
    with pytest.raises(InvalidTransition):
        lifecycle.expire(active(), NOW)


def test_worker_discard_dead_letters_the_job_with_the_reason() -> None:
    job = lifecycle.worker_discard(active(), NOW, "poison message")
    assert (job.state, job.dead_letter) == (S.DISCARDED, True)
    assert (job.discarded_at_ms, job.completed_at_ms) == (NOW, NOW)
    assert job.errors[-1]["message"] == "poison message"
    assert job.errors[-1]["attempt"] == 1
    assert job.error is not None and job.error["code"] == "rejected"


def test_a_broker_delivery_limit_discard_carries_its_own_error_code() -> None:
    job = lifecycle.worker_discard(active(), NOW, "dead-lettered after 21 deliveries",
                                   "delivery_limit")  # fmt: skip
    assert (job.state, job.dead_letter) == (S.DISCARDED, True)
    assert job.error is not None
    assert (job.error["code"], job.error["type"]) == ("delivery_limit", "delivery_limit")


def test_retry_from_the_dead_letter_list_starts_afresh_but_keeps_history() -> None:
    dead = lifecycle.fail(active(attempt=3, copy=2), NOW, FailureReport(action="DEAD_LETTER"), rng)
    job = lifecycle.retry_dead_letter(dead, NOW + 5)
    assert (job.state, job.attempt, job.enqueued_at_ms) == (S.AVAILABLE, 0, NOW + 5)
    assert job.dead_letter is False
    assert job.discarded_at_ms is job.completed_at_ms is job.started_at_ms is None
    assert job.error is None
    assert job.errors == dead.errors
    assert job.copy == dead.copy + 1


# --- purity -------------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "move"), sorted(TRANSITIONS, key=str), ids=lambda x: str(x))
def test_moves_return_a_new_job_and_never_mutate_their_input(state: JobState, move: Move) -> None:
    job = make_job(state, attempt=1, errors=[{"code": "old"}], meta={"k": "v"})
    before = copy.deepcopy(job)
    after = MOVES[move](job)
    assert after is not job
    assert job == before
    assert job.errors == [{"code": "old"}]
