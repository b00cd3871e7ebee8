"""The crash ledger's judgement on its own: each attempt's outcome must be one its worker's
answers allow (docs/reliability.md, "Requests a crash leaves unanswered")."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests import ledger
from tests.ledger import LAPSED, NO_ANSWER, Attempt, Ledger
from tests.workload import Workload

JOB = "job-1"


def _judge(
    kind: str,
    seen: dict[int, Attempt],
    job: dict[str, Any],
    unanswered_fetches: int = 0,
) -> Ledger:
    run = Workload("http://unused", {JOB: kind}, fetch_count=1)
    run.accepted = run.created = {JOB}
    run.attempts[JOB] = seen
    run.fetches[JOB] = len(seen)
    run.unanswered_fetches = unanswered_fetches
    return Ledger(run, {JOB: {"id": JOB, **job}})


def _errors(*codes: tuple[int, str]) -> list[dict[str, Any]]:
    return [{"attempt": k, "code": code} for k, code in codes]


def nack(*answers: str, retryable: bool = True) -> Attempt:
    return Attempt("w0", "nack", "boom", retryable, list(answers))


def ack(*answers: str) -> Attempt:
    return Attempt("w0", "ack", None, True, list(answers))


@pytest.mark.parametrize(
    "first_code",
    ["boom", LAPSED],  # the cut nack was recorded, or the lease died first
)
def test_a_nack_without_an_answer_then_409_may_have_been_recorded_or_not(first_code: str) -> None:
    job = {"state": "completed", "attempt": 2, "errors": _errors((1, first_code))}
    _judge("retry", {1: nack(NO_ANSWER, "409 retryable"), 2: ack("200 completed")}, job).check()


def test_a_nack_answered_200_must_be_in_the_history() -> None:
    job = {"state": "completed", "attempt": 2, "errors": _errors((1, LAPSED))}
    with pytest.raises(AssertionError, match=re.escape("attempt 1 may hold one of {'boom'}")):
        _judge("retry", {1: nack("200 retryable"), 2: ack("200 completed")}, job).check()


def test_an_ack_refused_at_once_cannot_have_completed_the_job() -> None:
    job = {"state": "completed", "attempt": 1, "errors": []}
    with pytest.raises(AssertionError, match="completed at attempt 1"):
        _judge("ack", {1: ack("409 available")}, job).check()


def test_a_final_nack_cut_short_ends_the_job_either_way() -> None:
    for code in ("boom", LAPSED):
        job = {"state": "discarded", "attempt": 1, "errors": _errors((1, code)),
               "error": {"code": code}}  # fmt: skip
        _judge("fail", {1: nack(NO_ANSWER, "409 discarded", retryable=False)}, job).check()


def test_an_attempt_nobody_was_handed_needs_an_unanswered_fetch() -> None:
    job = {"state": "completed", "attempt": 2, "errors": _errors((1, LAPSED))}
    seen = {2: ack("200 completed")}
    _judge("ack", seen, job, unanswered_fetches=1).check()
    with pytest.raises(AssertionError, match="attempts no worker was handed"):
        _judge("ack", seen, job, unanswered_fetches=0).check()


def test_a_lost_lease_counted_twice_leaves_a_gap_in_the_history() -> None:
    job = {"state": "completed", "attempt": 3, "errors": _errors((2, LAPSED))}
    seen = {1: Attempt("w0"), 3: ack("200 completed")}  # abandoned, then acked
    with pytest.raises(AssertionError, match="attempt 1 may hold one of"):
        _judge("abandon", seen, job, unanswered_fetches=5).check()


def test_a_retryable_failure_on_the_last_attempt_must_end_the_job() -> None:
    job = {"state": "completed", "attempt": 4, "errors": _errors(*((k, LAPSED) for k in (1, 2, 3)))}
    seen = {k: Attempt("w0") for k in (1, 2, 3)} | {4: ack("200 completed")}
    with pytest.raises(AssertionError, match="attempt 3's visibility_timeout should end it"):
        _judge("ack", seen, job).check()


def test_one_attempt_handed_to_two_workers_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger, "KNOWN_ENGINE_BUGS", frozenset())
    job = {"state": "completed", "attempt": 1, "errors": []}
    judged = _judge("ack", {1: ack("200 completed")}, job)
    judged.run.twice[JOB] = 1
    with pytest.raises(AssertionError, match="handed out twice"):
        judged.check()


def test_an_ack_answered_200_cannot_end_as_a_lapsed_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger, "KNOWN_ENGINE_BUGS", frozenset())
    job = {"state": "completed", "attempt": 2, "errors": _errors((1, LAPSED))}
    judged = _judge("ack", {1: ack(NO_ANSWER, "200 completed"), 2: ack("200 completed")}, job)
    assert judged.known_bugs_seen() == {"answered then lapsed": 1}
    with pytest.raises(AssertionError, match=re.escape("attempt 1 may hold one of {'completed'}")):
        judged.check()


def test_an_answer_overwritten_fails_and_an_allowance_covers_it_only_after_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = {"state": "completed", "attempt": 2, "errors": _errors((1, LAPSED))}
    after_restart = {1: nack("refused", "200 retryable"), 2: ack("200 completed")}
    with pytest.raises(AssertionError, match="attempt 1 may hold one of"):
        _judge("retry", after_restart, job).check()  # the race is fixed: no allowance
    monkeypatch.setattr(ledger, "KNOWN_ENGINE_BUGS", frozenset({"answered then lapsed"}))
    _judge("retry", after_restart, job).check()  # named: let through after a restart only
    with pytest.raises(AssertionError, match="attempt 1 may hold one of"):
        _judge("retry", {1: nack("200 retryable"), 2: ack("200 completed")}, job).check()
