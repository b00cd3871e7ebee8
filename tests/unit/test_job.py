"""The Job, its wire envelope and its lossless storage record."""

from __future__ import annotations

import copy
import json
import pickle
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ojs_amqp.core.job import MISSING, Job, JobState, from_record, to_record, to_wire
from ojs_amqp.core.retry import RetryPolicy

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20.000Z
JOB_ID = "0190a5b8-3c4d-7e5f-8a6b-1c2d3e4f5a6b"


def make_job(**changes: Any) -> Job:
    job = Job(
        id=JOB_ID,
        type="email.send",
        queue="default",
        args=["a@example.com", 3],
        state=JobState.AVAILABLE,
        created_at_ms=T0,
        enqueued_at_ms=T0,
    )
    return replace(job, **changes)


# --- wire ---------------------------------------------------------------------------------


def test_minimal_job_wire_form_has_only_present_fields() -> None:
    wire = to_wire(make_job())
    assert wire == {
        "specversion": "1.0",
        "id": JOB_ID,
        "type": "email.send",
        "queue": "default",
        "args": ["a@example.com", 3],
        "meta": {},
        "priority": 0,
        "state": "available",
        "attempt": 0,
        "max_attempts": 3,
        "retry": RetryPolicy().to_wire(),
        "created_at": "2023-11-14T22:13:20.000Z",
        "enqueued_at": "2023-11-14T22:13:20.000Z",
        "errors": [],
    }


@pytest.mark.parametrize(
    "absent",
    [
        "timeout_ms", "visibility_timeout_ms", "tags", "unique", "schema", "scheduled_at",
        "expires_at", "started_at", "completed_at", "cancelled_at", "discarded_at",
        "next_attempt_at", "retry_delay_ms", "worker_id", "error", "result", "dead_letter",
    ],
)  # fmt: skip
def test_absent_fields_are_omitted_from_the_wire(absent: str) -> None:
    assert absent not in to_wire(make_job())


def test_wire_starts_with_the_envelope_keys_in_a_stable_order() -> None:
    assert list(to_wire(make_job()))[:5] == ["specversion", "id", "type", "queue", "args"]


def test_timestamps_on_the_wire_are_rfc3339_utc_with_milliseconds() -> None:
    wire = to_wire(make_job(started_at_ms=T0 + 7, next_attempt_at_ms=T0 + 1500))
    assert wire["started_at"] == "2023-11-14T22:13:20.007Z"
    assert wire["next_attempt_at"] == "2023-11-14T22:13:21.500Z"


def test_max_attempts_on_the_wire_comes_from_the_retry_policy() -> None:
    job = make_job(retry=RetryPolicy(max_attempts=7))
    assert job.max_attempts == 7
    assert to_wire(job)["max_attempts"] == 7
    assert to_wire(job)["retry"]["max_attempts"] == 7


def test_missing_result_is_omitted_but_a_null_result_is_sent() -> None:
    assert "result" not in to_wire(make_job(result=MISSING))
    wire = to_wire(make_job(result=None))
    assert "result" in wire and wire["result"] is None


def test_falsy_results_are_still_sent() -> None:
    for value in (0, False, "", [], {}):
        assert to_wire(make_job(result=value))["result"] == value


def test_dead_letter_flag_is_sent_only_when_set() -> None:
    assert to_wire(make_job(dead_letter=True))["dead_letter"] is True


def test_present_error_is_sent() -> None:
    error = {"code": "e", "message": "m"}
    assert to_wire(make_job(error=error))["error"] == error


def test_unknown_client_fields_are_returned_after_the_known_ones() -> None:
    wire = to_wire(make_job(extra={"x-trace": "abc", "custom": {"n": 1}}))
    assert wire["x-trace"] == "abc" and wire["custom"] == {"n": 1}
    assert list(wire)[-2:] == ["x-trace", "custom"]


def test_unknown_fields_never_override_known_ones() -> None:
    wire = to_wire(make_job(extra={"state": "completed", "id": "nope"}))
    assert (wire["state"], wire["id"]) == ("available", JOB_ID)


def test_wire_form_is_json_serialisable() -> None:
    job = make_job(result={"ok": True}, error={"code": "x"}, tags=["t"], dead_letter=True)
    assert json.loads(json.dumps(to_wire(job))) == to_wire(job)


# --- states -------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(JobState))
def test_terminal_states_are_completed_cancelled_and_discarded(state: JobState) -> None:
    assert state.terminal is (state.value in ("completed", "cancelled", "discarded"))


# --- the MISSING sentinel -----------------------------------------------------------------


def test_missing_survives_copy_deepcopy_and_pickle() -> None:
    assert copy.copy(MISSING) is MISSING
    assert copy.deepcopy(MISSING) is MISSING
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING


def test_a_deep_copied_job_still_has_no_result() -> None:
    assert "result" not in to_wire(copy.deepcopy(make_job()))


# --- storage record -----------------------------------------------------------------------


def test_record_round_trips_a_minimal_job() -> None:
    job = make_job()
    assert from_record(to_record(job)) == job


def test_record_keeps_raw_milliseconds_and_the_copy_number() -> None:
    record = to_record(make_job(copy=4, started_at_ms=T0 + 1))
    assert (record["started_at_ms"], record["copy"], record["state"]) == (T0 + 1, 4, "available")


def test_record_omits_a_missing_result_and_keeps_a_null_one() -> None:
    assert "result" not in to_record(make_job())
    assert from_record(to_record(make_job())).result is MISSING
    assert to_record(make_job(result=None))["result"] is None
    assert from_record(to_record(make_job(result=None))).result is None


def test_record_round_trips_a_fully_populated_job_through_json() -> None:
    job = make_job(
        state=JobState.DISCARDED,
        meta={"tenant": "t1"},
        priority=-5,
        attempt=3,
        retry=RetryPolicy(
            max_attempts=5,
            initial_interval_ms=250,
            backoff_coefficient=1.5,
            max_interval_ms=9000,
            jitter=False,
            non_retryable_errors=("auth.*", "ValueError"),
            on_exhaustion="dead_letter",
            backoff_strategy="polynomial",
        ),
        timeout_ms=30_000,
        visibility_timeout_ms=5000,
        tags=["a", "b"],
        unique={"key": "k"},
        schema="urn:s",
        scheduled_at_ms=T0 + 1,
        expires_at_ms=T0 + 2,
        activated_at_ms=T0 + 3,
        started_at_ms=T0 + 4,
        completed_at_ms=T0 + 5,
        discarded_at_ms=T0 + 5,
        next_attempt_at_ms=None,
        retry_delay_ms=1000,
        worker_id="w",
        error={"code": "e"},
        errors=[{"code": "e", "attempt": 3}],
        result={"partial": [1, 2]},
        dead_letter=True,
        copy=9,
        extra={"x-custom": [1, {"y": None}]},
    )
    assert from_record(json.loads(json.dumps(to_record(job)))) == job


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
maybe_ms = st.none() | st.integers(min_value=0, max_value=4_102_444_800_000)


@st.composite
def jobs(draw: st.DrawFn) -> Job:
    initial = draw(st.integers(min_value=1, max_value=60_000))
    return make_job(
        state=draw(st.sampled_from(list(JobState))),
        args=draw(st.lists(json_values, max_size=4)),
        meta=draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
        priority=draw(st.integers(min_value=-100, max_value=100)),
        attempt=draw(st.integers(min_value=0, max_value=50)),
        retry=RetryPolicy(
            max_attempts=draw(st.integers(min_value=0, max_value=50)),
            initial_interval_ms=initial,
            max_interval_ms=draw(st.integers(min_value=initial, max_value=10**7)),
            backoff_coefficient=draw(st.floats(min_value=1.0, max_value=10.0)),
            jitter=draw(st.booleans()),
            non_retryable_errors=tuple(draw(st.lists(st.text(max_size=6), max_size=3))),
            on_exhaustion=draw(st.sampled_from(["discard", "dead_letter"])),
        ),
        timeout_ms=draw(st.none() | st.integers(min_value=1, max_value=10**7)),
        tags=draw(st.none() | st.lists(st.text(max_size=5), max_size=3)),
        started_at_ms=draw(maybe_ms),
        completed_at_ms=draw(maybe_ms),
        next_attempt_at_ms=draw(maybe_ms),
        worker_id=draw(st.none() | st.text(max_size=8)),
        error=draw(st.none() | st.dictionaries(st.text(max_size=5), json_values, max_size=2)),
        result=draw(st.just(MISSING) | json_values),
        dead_letter=draw(st.booleans()),
        copy=draw(st.integers(min_value=1, max_value=1000)),
        extra=draw(st.dictionaries(st.text(min_size=1, max_size=5), json_values, max_size=2)),
    )


@given(jobs())
def test_any_job_survives_a_json_storage_round_trip(job: Job) -> None:
    assert from_record(json.loads(json.dumps(to_record(job)))) == job


@given(jobs())
def test_wire_form_agrees_with_the_job(job: Job) -> None:
    wire = to_wire(job)
    assert wire["state"] == job.state.value
    assert wire["attempt"] == job.attempt
    assert ("result" in wire) is (job.result is not MISSING)
    assert ("started_at" in wire) is (job.started_at_ms is not None)
    assert ("worker_id" in wire) is (job.worker_id is not None)
    assert ("dead_letter" in wire) is job.dead_letter
    assert json.loads(json.dumps(wire)) == wire
