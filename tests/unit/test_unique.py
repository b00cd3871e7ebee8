"""Unique jobs: policy validation, the canonical fingerprint and the conflict decision."""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ojs_amqp.core.canonical import SAFE_INTEGER, canonical_bytes
from ojs_amqp.core.job import Job, JobState
from ojs_amqp.core.unique import (
    DEFAULT_STATES,
    TERMINAL_CLAIM_CAP_MS,
    Admit,
    Holder,
    Ignore,
    OnConflict,
    Reject,
    Replace,
    UniqueConflict,
    UniquePolicy,
    claim_kept_until_ms,
    claims,
    decide,
    fingerprint,
    parse_unique_policy,
    rejection,
    with_kept_schedule,
)
from ojs_amqp.errors import InvalidRequest

# --- policy validation ---------------------------------------------------------------------


def test_defaults_follow_the_spec() -> None:
    policy = parse_unique_policy({})
    assert policy == UniquePolicy()
    assert policy.keys == ("type",)
    assert policy.states == DEFAULT_STATES
    assert policy.on_conflict is OnConflict.REJECT
    assert policy.period_ms is None


def test_type_is_always_a_dimension_and_keys_are_normalised() -> None:
    assert parse_unique_policy({"keys": ["args", "queue"]}).keys == ("type", "queue", "args")
    assert parse_unique_policy({"keys": []}).keys == ("type",)


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ("yes", "unique", "must be an object"),
        ({"keys": ["argz"]}, "unique.keys", "'argz'"),
        ({"keys": "type"}, "unique.keys", "array"),
        ({"keys": ["type", "type"]}, "unique.keys", "repeat"),
        ({"keys": ["meta"]}, "unique.meta_keys", "at least one"),
        ({"keys": ["meta"], "meta_keys": []}, "unique.meta_keys", "at least one"),
        ({"meta_keys": ["tenant"]}, "unique.meta_keys", "does not include 'meta'"),
        ({"args_keys": ["user_id"]}, "unique.args_keys", "does not include 'args'"),
        ({"states": ["availble"]}, "unique.states", "'availble'"),
        ({"states": []}, "unique.states", "at least one"),
        ({"on_conflict": "overwrite"}, "unique.on_conflict", "reject"),
        ({"period": 3600}, "unique.period", "ISO 8601"),
        ({"period": "an hour"}, "unique.period", "ISO 8601"),
        ({"period": "PT0S"}, "unique.period", "longer than zero"),
        ({"unique_for": 60}, "unique.unique_for", "not a unique policy field"),
        ({"key": ["a"], "keys": ["type"]}, "unique.key", "one or the other"),
    ],
)
def test_invalid_policies_are_400_naming_the_field(raw: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_unique_policy(raw)
    assert caught.value.http_status == 400
    assert caught.value.details["field"] == field
    assert words in caught.value.message


def test_dialects_of_the_core_examples_and_openapi() -> None:
    core = parse_unique_policy({"key": ["report_id"], "period": "3600s"})
    assert core.keys == ("type", "args")
    assert core.args_keys == ("report_id",)
    assert core.period_ms == 3_600_000
    assert parse_unique_policy({"key": []}).keys == ("type",)
    assert parse_unique_policy({"on_conflict": "use_existing"}).on_conflict is OnConflict.IGNORE


def test_period_and_states_parse() -> None:
    policy = parse_unique_policy({"period": "PT2S", "states": ["available", "completed"]})
    assert policy.period_ms == 2000
    assert policy.states == {JobState.AVAILABLE, JobState.COMPLETED}
    assert policy.holds_in(JobState.COMPLETED)
    assert not policy.holds_in(JobState.ACTIVE)
    assert policy.outlives_terminal_move


# --- fingerprint ---------------------------------------------------------------------------


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_fingerprint_matches_the_spec_worked_example() -> None:
    policy = parse_unique_policy({"keys": ["type", "queue", "args"], "args_keys": ["user_id"]})
    args = [{"user_id": 42, "template": "welcome", "locale": "en-US"}]
    meta = {"tenant_id": "acme", "trace_id": "abc123"}
    expected = _sha('{"args":{"user_id":42},"queue":"notifications","type":"email.send"}')
    assert fingerprint(policy, "email.send", "notifications", args, meta) == expected


def test_fingerprint_dimensions() -> None:
    by_type = parse_unique_policy({})
    assert fingerprint(by_type, "a.b", "q1", [1], None) == _sha('{"type":"a.b"}')
    assert fingerprint(by_type, "a.b", "q1", [1], None) == fingerprint(
        by_type, "a.b", "q2", [2], {}
    )
    by_queue = parse_unique_policy({"keys": ["queue"]})
    assert fingerprint(by_queue, "a.b", "q1", [], None) != fingerprint(
        by_queue, "a.b", "q2", [], None
    )
    by_meta = parse_unique_policy({"keys": ["meta"], "meta_keys": ["tenant", "absent"]})
    assert fingerprint(by_meta, "a.b", "q", [], {"tenant": "acme", "trace": "1"}) == _sha(
        '{"meta":{"tenant":"acme"},"type":"a.b"}'
    )
    by_args = parse_unique_policy({"keys": ["args"]})
    assert fingerprint(by_args, "a.b", "q", [1, "x"], None) == _sha('{"args":[1,"x"],"type":"a.b"}')


def test_args_keys_are_taken_from_the_object_elements_of_args() -> None:
    policy = parse_unique_policy({"keys": ["args"], "args_keys": ["id", "kind"]})
    one = fingerprint(policy, "t", "q", ["ignored", {"id": 7}, {"kind": "x", "id": 8}], None)
    assert one == _sha('{"args":{"id":7,"kind":"x"},"type":"t"}')
    with pytest.raises(InvalidRequest) as caught:
        fingerprint(policy, "t", "q", [{"id": 7}], None)
    assert caught.value.details == {"field": "unique.args_keys", "missing": "kind"}


def test_values_jcs_cannot_hold_exactly_are_refused_with_their_path() -> None:
    policy = parse_unique_policy({"keys": ["args"]})
    with pytest.raises(InvalidRequest) as caught:
        fingerprint(policy, "t", "q", [{"id": SAFE_INTEGER + 1}], None)
    assert "args[0].id" in caught.value.message and "string" in caught.value.message
    assert fingerprint(policy, "t", "q", [SAFE_INTEGER, -SAFE_INTEGER], None)
    with pytest.raises(InvalidRequest, match="NaN"):
        canonical_bytes([float("nan")], "args")
    with pytest.raises(InvalidRequest, match="surrogate"):
        canonical_bytes(["\ud800"], "args")
    with pytest.raises(InvalidRequest, match="NFC"):
        canonical_bytes({"e\u0301": 1, "\u00e9": 2}, "args[0]")


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ({"b": 1, "a": [True, None]}, '{"a":[true,null],"b":1}'),
        ([1.0, 1e21, 1e-7, 0.1, -0.0, 100], "[1,1e+21,1e-7,0.1,0,100]"),
        (["\u00e9", "e\u0301"], '["\u00e9","\u00e9"]'),
        (["a\nb", '"', "\u001f", "\u2028"], '["a\\nb","\\"","\\u001f","\u2028"]'),
        # UTF-16 code-unit order: U+1F600 (D83D DE00) sorts before U+FB01, unlike code points.
        ({"\ufb01": 1, "\U0001f600": 2}, '{"\U0001f600":2,"\ufb01":1}'),
    ],
)
def test_canonical_form_is_rfc_8785(value: Any, canonical: str) -> None:
    assert canonical_bytes(value, "args") == canonical.encode()


json_scalars = (
    st.none()
    | st.booleans()
    | st.text(max_size=8)
    | st.integers(-SAFE_INTEGER, SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def _reorder(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reorder(v) for v in value]
    return value


def _decompose(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFD", value)
    if isinstance(value, dict):
        return {unicodedata.normalize("NFD", k): _decompose(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decompose(v) for v in value]
    return value


def _as_floats(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and abs(value) <= 2**52:
        return float(value)
    if isinstance(value, dict):
        return {k: _as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_floats(v) for v in value]
    return value


def _nfc_safe(value: Any) -> bool:
    """Keys of an object that stay distinct after NFC (others are refused, tested above)."""
    if isinstance(value, dict):
        keys = [unicodedata.normalize("NFC", k) for k in value]
        return len(set(keys)) == len(keys) and all(_nfc_safe(v) for v in value.values())
    if isinstance(value, list):
        return all(_nfc_safe(v) for v in value)
    return True


ARGS_POLICY = UniquePolicy(keys=("type", "args"))


@given(json_values)
def test_fingerprint_ignores_key_order(value: Any) -> None:
    assert fingerprint(ARGS_POLICY, "t", "q", [value], None) == fingerprint(
        ARGS_POLICY, "t", "q", [_reorder(value)], None
    )


@given(json_values)
def test_fingerprint_ignores_unicode_normalisation(value: Any) -> None:
    if not _nfc_safe(_decompose(value)):
        return
    assert fingerprint(ARGS_POLICY, "t", "q", [value], None) == fingerprint(
        ARGS_POLICY, "t", "q", [_decompose(value)], None
    )


@given(json_values)
def test_fingerprint_ignores_number_forms(value: Any) -> None:
    assert fingerprint(ARGS_POLICY, "t", "q", [value], None) == fingerprint(
        ARGS_POLICY, "t", "q", [_as_floats(value)], None
    )


@given(json_values, json_values)
def test_different_values_give_different_fingerprints(a: Any, b: Any) -> None:
    if canonical_bytes([a], "args") != canonical_bytes([b], "args"):
        assert fingerprint(ARGS_POLICY, "t", "q", [a], None) != fingerprint(
            ARGS_POLICY, "t", "q", [b], None
        )


# --- conflict decision ---------------------------------------------------------------------

NOW = 1_700_000_000_000


def holder(state: JobState, age_ms: int = 0, job_id: str = "old", **kw: Any) -> Holder:
    return Holder(job_id=job_id, state=state, created_at_ms=NOW - age_ms, **kw)


def test_no_holder_admits() -> None:
    assert decide(UniquePolicy(), [], NOW) == Admit()


@pytest.mark.parametrize("state", sorted(JobState))
def test_default_states_hold_a_claim_and_terminal_states_do_not(state: JobState) -> None:
    result = decide(UniquePolicy(), [holder(state)], NOW)
    assert isinstance(result, Admit) == state.terminal


def test_period_counts_from_the_holder_created_at() -> None:
    policy = UniquePolicy(period_ms=2000)
    assert isinstance(decide(policy, [holder(JobState.AVAILABLE, age_ms=1999)], NOW), Reject)
    assert decide(policy, [holder(JobState.AVAILABLE, age_ms=2000)], NOW) == Admit()
    assert claims(policy, holder(JobState.AVAILABLE, age_ms=1), NOW)


def test_terminal_states_hold_when_listed() -> None:
    policy = UniquePolicy(states=frozenset({JobState.COMPLETED}), period_ms=60_000)
    assert isinstance(decide(policy, [holder(JobState.COMPLETED, 10)], NOW), Reject)
    assert decide(policy, [holder(JobState.AVAILABLE, 10)], NOW) == Admit()
    assert claim_kept_until_ms(policy, NOW) == NOW + 60_000
    assert claim_kept_until_ms(UniquePolicy(states=policy.states), NOW) == (
        NOW + TERMINAL_CLAIM_CAP_MS
    )
    assert claim_kept_until_ms(UniquePolicy(), NOW) is None


def test_outcomes_by_on_conflict() -> None:
    old, older = holder(JobState.ACTIVE, 5, "b"), holder(JobState.AVAILABLE, 9, "a")
    gone = holder(JobState.COMPLETED, 1, "c")
    held = [older, gone, old]
    assert decide(UniquePolicy(), held, NOW) == Reject(old)
    assert decide(UniquePolicy(on_conflict=OnConflict.IGNORE), held, NOW) == Ignore(old)
    assert decide(UniquePolicy(on_conflict=OnConflict.REPLACE), held, NOW) == Replace((old, older))


def test_replace_except_schedule_keeps_a_scheduled_holder_time() -> None:
    policy = UniquePolicy(on_conflict=OnConflict.REPLACE_EXCEPT_SCHEDULE)
    due = NOW + 60_000
    sched = holder(JobState.SCHEDULED, 1, scheduled_at_ms=due)
    assert decide(policy, [sched], NOW) == Replace((sched,), due)
    assert decide(policy, [holder(JobState.AVAILABLE)], NOW) == Replace(
        (holder(JobState.AVAILABLE),), None
    )
    job = Job(id="n", type="t", queue="q", args=[], state=JobState.AVAILABLE, created_at_ms=NOW,
              enqueued_at_ms=NOW, client_times={"scheduled_at": "x"})  # fmt: skip
    later = with_kept_schedule(job, due, NOW)
    assert (later.state, later.scheduled_at_ms, later.enqueued_at_ms) == (
        JobState.SCHEDULED, due, None)  # fmt: skip
    assert later.client_times == {}
    past = with_kept_schedule(job, NOW - 1, NOW)
    assert (past.state, past.enqueued_at_ms) == (JobState.AVAILABLE, NOW)


def test_rejection_is_409_duplicate_with_the_existing_id() -> None:
    error = rejection(Reject(holder(JobState.ACTIVE, job_id="0190")), "abc")
    assert isinstance(error, UniqueConflict)
    assert (error.http_status, error.code) == (409, "duplicate")
    assert error.details == {
        "existing_job_id": "0190", "existing_job_state": "active", "uniqueness_key": "abc"
    }  # fmt: skip
    assert "0190" in error.message and "uniqueness key" in error.hint
