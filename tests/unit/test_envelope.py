"""Parsing a push body into a Job (both dialects), plus job ids and wire timestamps."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ojs_amqp.core.envelope import (
    RESERVED_QUEUE_PREFIXES,
    UNHONOURED_OPTIONS,
    RetryIn,
    build_retry_policy,
    parse_enqueue,
    validate_queue,
    validate_type,
)
from ojs_amqp.core.ids import UUIDv7Generator, is_uuidv7
from ojs_amqp.core.job import JobState, to_wire
from ojs_amqp.core.retry import RetryPolicy
from ojs_amqp.core.times import format_ms, parse_rfc3339_ms
from ojs_amqp.errors import InvalidRequest, OjsError, Unsupported, ValidationFailed

NOW = 1_700_000_000_000  # 2023-11-14T22:13:20.000Z
NEW_ID = UUIDv7Generator().new(NOW)
CLIENT_ID = UUIDv7Generator().new(NOW - 1)


def parse(**body: Any) -> Any:
    return parse_enqueue({"type": "email.send", "args": [], **body}, now_ms=NOW, new_id=NEW_ID)


def parse_options(**options: Any) -> Any:
    return parse(options=options)


# --- the minimal push ---------------------------------------------------------------------


def test_minimal_push_gives_an_available_job_with_defaults() -> None:
    job = parse(args=["a", 1])
    assert (job.id, job.type, job.queue, job.args) == (NEW_ID, "email.send", "default", ["a", 1])
    assert (job.state, job.priority, job.attempt) == (JobState.AVAILABLE, 0, 0)
    assert (job.created_at_ms, job.enqueued_at_ms) == (NOW, NOW)
    assert job.retry == RetryPolicy()
    assert job.extra == {} and job.meta == {}


@pytest.mark.parametrize("body", [None, [], "x", 1, [{"type": "a", "args": []}]])
def test_a_body_that_is_not_an_object_is_an_invalid_request(body: Any) -> None:
    with pytest.raises(InvalidRequest):
        parse_enqueue(body, now_ms=NOW, new_id=NEW_ID)


@pytest.mark.parametrize(
    "body",
    [
        {"args": []},
        {"type": "email.send"},
        {"type": 5, "args": []},
        {"type": "email.send", "args": {"a": 1}},
        {"type": "email.send", "args": "a"},
        {"type": "email.send", "args": 1},
        {"type": "email.send", "args": None},
    ],
)
def test_missing_or_mistyped_type_and_args_are_invalid_requests(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_enqueue(body, now_ms=NOW, new_id=NEW_ID)
    assert info.value.http_status == 400


def test_structural_errors_list_the_offending_field() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_enqueue({"type": "email.send", "args": "x"}, now_ms=NOW, new_id=NEW_ID)
    assert "args" in info.value.message
    assert any(e["field"] == "args" for e in info.value.details["errors"])


# --- type and queue names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["email", "email.send", "a.b.c", "email.send-v2", "report_gen.pdf", "x1.y2", "a" * 255]
)
def test_valid_job_types_are_accepted(name: str) -> None:
    validate_type(name)


@pytest.mark.parametrize(
    "name",
    ["", "Email", "email.Send", "1email", "email.", ".email", "email..send", "email send",
     "email.1x", "e/mail", "é", "a" * 256, "email.send\n"],
)  # fmt: skip
def test_invalid_job_types_are_rejected(name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_type(name)
    assert info.value.details == {"field": "type"}


def test_an_invalid_type_in_a_push_is_rejected() -> None:
    with pytest.raises(InvalidRequest):
        parse(type="Email.Send")


@pytest.mark.parametrize(
    "name",
    ["default", "q", "0", "email-high", "team.a.jobs", "dlx", "retryable", "delayed", "a" * 255],
)
def test_valid_queue_names_are_accepted(name: str) -> None:
    validate_queue(name)


@pytest.mark.parametrize(
    "name", ["", "Default", "-q", ".q", "q_1", "q 1", "q/1", "q:1", "a" * 256, "default\n"]
)
def test_invalid_queue_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_queue(name)


@pytest.mark.parametrize("prefix", RESERVED_QUEUE_PREFIXES)
def test_queue_names_with_a_reserved_prefix_are_rejected(prefix: str) -> None:
    with pytest.raises(InvalidRequest, match="reserved"):
        validate_queue(prefix + "orders")


def test_reserved_prefixes_are_the_four_broker_namespaces() -> None:
    assert set(RESERVED_QUEUE_PREFIXES) == {"control.", "dlx.", "retry.", "delay."}


def test_queue_may_be_given_at_top_level_or_in_options_and_options_win() -> None:
    assert parse(queue="top").queue == "top"
    assert parse(queue="top", options={"queue": "opt"}).queue == "opt"


def test_a_reserved_queue_in_a_push_is_rejected() -> None:
    with pytest.raises(InvalidRequest):
        parse_options(queue="dlx.default")


# --- ids ----------------------------------------------------------------------------------


def test_a_client_supplied_uuidv7_is_kept() -> None:
    assert parse(id=CLIENT_ID).id == CLIENT_ID


@pytest.mark.parametrize(
    "bad",
    [
        CLIENT_ID.upper(),
        str(uuid.uuid4()),
        "not-an-id",
        "",
        CLIENT_ID.replace("-", ""),
    ],
)
def test_a_client_id_that_is_not_a_lower_case_uuidv7_is_rejected(bad: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(id=bad)
    assert info.value.details == {"field": "id"}


# --- priority -----------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [-100, -1, 0, 1, 100])
def test_priority_within_range_is_accepted(priority: int) -> None:
    assert parse(priority=priority).priority == priority
    assert parse_options(priority=priority).priority == priority


@pytest.mark.parametrize("priority", [-101, 101, 10**6])
def test_priority_out_of_range_is_rejected(priority: int) -> None:
    with pytest.raises((InvalidRequest, ValidationFailed)) as info:
        parse_options(priority=priority)
    assert info.value.details == {"field": "priority"}


@pytest.mark.parametrize("priority", ["5", 1.5, True])
def test_priority_must_be_an_integer(priority: Any) -> None:
    with pytest.raises(InvalidRequest):
        parse(priority=priority)


# --- unknown and system fields ------------------------------------------------------------


def test_unknown_top_level_fields_are_kept_and_returned() -> None:
    job = parse(trace_id="abc", custom={"n": [1]})
    assert job.extra == {"trace_id": "abc", "custom": {"n": [1]}}
    wire = to_wire(job)
    assert wire["trace_id"] == "abc" and wire["custom"] == {"n": [1]}


def test_client_values_for_system_fields_are_ignored() -> None:
    job = parse(state="completed", attempt=9, result=1, created_at="2000-01-01T00:00:00Z")
    assert (job.state, job.attempt, job.created_at_ms) == (JobState.AVAILABLE, 0, NOW)
    assert job.extra == {}
    assert "result" not in to_wire(job)


def test_specversion_and_schema_are_understood_not_treated_as_unknown() -> None:
    job = parse(specversion="1.0", schema="urn:ojs:email")
    assert job.schema == "urn:ojs:email"
    assert job.extra == {}


# --- scheduling and pending ---------------------------------------------------------------


def test_future_scheduled_at_gives_a_scheduled_job() -> None:
    job = parse_options(scheduled_at="2023-11-14T22:14:20Z")
    assert (job.state, job.scheduled_at_ms) == (JobState.SCHEDULED, NOW + 60_000)
    assert job.enqueued_at_ms is None


def test_scheduled_at_with_an_offset_is_converted_to_utc() -> None:
    job = parse_options(scheduled_at="2023-11-15T00:14:20.250+02:00")
    assert job.scheduled_at_ms == NOW + 60_250


def test_past_scheduled_at_gives_an_available_job() -> None:
    job = parse_options(scheduled_at="2020-01-01T00:00:00Z")
    assert (job.state, job.enqueued_at_ms) == (JobState.AVAILABLE, NOW)


@pytest.mark.parametrize("text", ["+PT5S", "PT5S", "+5s", "+5000ms"])
def test_relative_scheduled_at_counts_from_now(text: str) -> None:
    job = parse_options(scheduled_at=text)
    assert (job.state, job.scheduled_at_ms) == (JobState.SCHEDULED, NOW + 5000)


def test_delay_until_is_an_alias_for_scheduled_at() -> None:
    job = parse_options(delay_until="+PT1M")
    assert (job.state, job.scheduled_at_ms) == (JobState.SCHEDULED, NOW + 60_000)


def test_scheduled_at_may_be_given_at_top_level() -> None:
    assert parse(scheduled_at="+PT1S").state is JobState.SCHEDULED


@pytest.mark.parametrize("text", ["tomorrow", "2030-01-01T00:00:00", "-PT5S", "+PTS"])
def test_unparseable_or_naive_scheduled_at_is_an_invalid_request(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_options(scheduled_at=text)
    assert info.value.details == {"field": "scheduled_at"}


def test_pending_option_gives_a_pending_job() -> None:
    job = parse_options(pending=True)
    assert (job.state, job.enqueued_at_ms) == (JobState.PENDING, None)


def test_pending_wins_over_a_future_schedule() -> None:
    assert parse_options(pending=True, scheduled_at="+PT1H").state is JobState.PENDING


def test_pending_false_is_an_ordinary_job() -> None:
    assert parse_options(pending=False).state is JobState.AVAILABLE


def test_expires_at_accepts_absolute_and_relative_times() -> None:
    assert parse_options(expires_at="+PT1H").expires_at_ms == NOW + 3_600_000
    assert parse_options(expires_at="2023-11-14T22:13:21Z").expires_at_ms == NOW + 1000


def test_bad_expires_at_names_its_field() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_options(expires_at="later")
    assert info.value.details == {"field": "expires_at"}


# --- timeouts -----------------------------------------------------------------------------


def test_timeout_may_be_given_in_milliseconds_or_seconds() -> None:
    assert parse_options(timeout_ms=1500).timeout_ms == 1500
    assert parse_options(timeout=30).timeout_ms == 30_000
    assert parse_options(timeout_ms=1500, timeout=30).timeout_ms == 1500


@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_timeout_is_a_validation_failure(value: int) -> None:
    with pytest.raises(ValidationFailed):
        parse_options(timeout_ms=value)


def test_visibility_timeout_accepts_durations_and_milliseconds() -> None:
    assert parse_options(visibility_timeout="PT30S").visibility_timeout_ms == 30_000
    assert parse_options(visibility_timeout=2000).visibility_timeout_ms == 2000
    assert parse_options(visibility_timeout_ms=5000).visibility_timeout_ms == 5000


def test_too_short_visibility_timeout_is_a_validation_failure() -> None:
    with pytest.raises(ValidationFailed, match="visibility_timeout"):
        parse_options(visibility_timeout_ms=999)


def test_unparseable_visibility_timeout_is_a_validation_failure() -> None:
    with pytest.raises(ValidationFailed, match="visibility_timeout"):
        parse_options(visibility_timeout="soon")


# --- meta, tags, unique -------------------------------------------------------------------


def test_options_metadata_is_merged_into_meta() -> None:
    job = parse(meta={"a": 1, "b": 1}, options={"metadata": {"b": 2, "c": 3}})
    assert job.meta == {"a": 1, "b": 2, "c": 3}


def test_top_level_metadata_is_merged_into_meta() -> None:
    assert parse(meta={"a": 1}, metadata={"b": 2}).meta == {"a": 1, "b": 2}


def test_tags_are_taken_from_options() -> None:
    assert parse_options(tags=["x", "y"]).tags == ["x", "y"]


@pytest.mark.parametrize("name", sorted(UNHONOURED_OPTIONS))
@pytest.mark.parametrize("where", ["options", "top level"])
def test_an_option_the_daemon_cannot_honour_is_refused_not_ignored(name: str, where: str) -> None:
    value: Any = {"keys": ["args"]} if name in ("unique", "rate_limit") else 60
    with pytest.raises(Unsupported) as raised:
        parse_options(**{name: value}) if where == "options" else parse(**{name: value})
    field = f"options.{name}" if where == "options" else name
    assert raised.value.http_status == 422 and raised.value.code == "unsupported"
    assert raised.value.details["field"] == field
    feature, spec = UNHONOURED_OPTIONS[name]
    assert field in raised.value.message and feature in raised.value.message
    assert spec in raised.value.message and "not enqueued" in raised.value.message


def test_a_null_unhonoured_option_counts_as_absent() -> None:
    job = parse(unique=None, options={"unique": None, "rate_limit": None})
    assert job.unique is None and "rate_limit" not in to_wire(job)


def test_unknown_fields_still_travel_with_the_job_next_to_the_refusals() -> None:
    job = parse(x_custom={"a": 1}, ext_ml_gpu_count=2)
    assert to_wire(job)["x_custom"] == {"a": 1} and to_wire(job)["ext_ml_gpu_count"] == 2


def test_the_unique_policy_is_refused_before_it_could_be_silently_dropped() -> None:
    # Structural errors still come first: a malformed unique policy is a 400.
    with pytest.raises(InvalidRequest):
        parse_options(unique="yes")
    with pytest.raises(Unsupported, match="unique jobs"):
        parse_options(unique={"keys": ["type", "args"], "on_conflict": "reject"})


# --- retry policy -------------------------------------------------------------------------


def test_retry_policy_accepts_iso_durations() -> None:
    job = parse_options(
        retry={
            "max_attempts": 5,
            "initial_interval": "PT2S",
            "backoff_coefficient": 3,
            "max_interval": "PT1M",
            "jitter": False,
            "non_retryable_errors": ["auth.*"],
            "on_exhaustion": "dead_letter",
            "backoff_strategy": "linear",
        }
    )
    assert job.retry == RetryPolicy(
        5, 2000, 3.0, 60_000, False, ("auth.*",), "dead_letter", "linear"
    )


def test_retry_policy_accepts_millisecond_fields_which_win_over_durations() -> None:
    policy = parse_options(
        retry={"initial_interval_ms": 500, "initial_interval": "PT9S", "max_interval_ms": 4000}
    ).retry
    assert (policy.initial_interval_ms, policy.max_interval_ms) == (500, 4000)


def test_backoff_type_is_an_alias_for_backoff_strategy() -> None:
    assert parse_options(retry={"backoff_type": "constant"}).retry.backoff_strategy == "constant"


def test_retry_policy_may_be_called_retry_policy_or_given_at_top_level() -> None:
    assert parse_options(retry_policy={"max_attempts": 7}).retry.max_attempts == 7
    assert parse(retry={"max_attempts": 8}).retry.max_attempts == 8


def test_a_bare_max_attempts_option_sets_the_policy() -> None:
    assert parse_options(max_attempts=1).retry.max_attempts == 1
    assert parse(max_attempts=4).retry.max_attempts == 4


def test_max_attempts_inside_retry_wins_over_the_bare_option() -> None:
    assert parse_options(max_attempts=1, retry={"max_attempts": 6}).retry.max_attempts == 6


def test_a_large_initial_interval_raises_the_default_max_interval_to_match() -> None:
    policy = parse_options(retry={"initial_interval": "PT10M"}).retry
    assert policy.max_interval_ms == policy.initial_interval_ms == 600_000


def test_unspecified_retry_fields_keep_the_defaults() -> None:
    policy = parse_options(retry={"max_attempts": 9}).retry
    assert policy == RetryPolicy(max_attempts=9)


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ({"backoff_coefficient": 0.5}, "backoff_coefficient"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"initial_interval": "PT0S"}, "initial_interval"),
        ({"initial_interval_ms": 0}, "initial_interval"),
        ({"initial_interval": "PT10S", "max_interval": "PT5S"}, "max_interval"),
        ({"initial_interval": "soon"}, "initial_interval"),
        ({"max_interval": "-PT1S"}, "max_interval"),
        ({"on_exhaustion": "explode"}, "on_exhaustion"),
        ({"backoff_strategy": "fibonacci"}, "backoff_strategy"),
    ],
)
def test_invalid_retry_values_are_validation_failures_naming_the_field(
    retry: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_options(retry=retry)
    assert info.value.http_status == 422
    assert field in info.value.message


@pytest.mark.parametrize(
    "retry",
    [{"max_attempts": "3"}, {"jitter": "yes"}, {"non_retryable_errors": "auth"}, "fast", [1]],
)
def test_mistyped_retry_fields_are_invalid_requests(retry: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_options(retry=retry)
    assert info.value.http_status == 400


def test_build_retry_policy_without_input_gives_the_defaults() -> None:
    assert build_retry_policy(None, None) == RetryPolicy()


def test_an_empty_retry_object_gives_the_defaults() -> None:
    assert build_retry_policy(RetryIn(), None) == RetryPolicy()


def test_validation_and_request_errors_are_distinct_ojs_errors() -> None:
    assert issubclass(ValidationFailed, OjsError) and issubclass(InvalidRequest, OjsError)
    assert not issubclass(ValidationFailed, InvalidRequest)
    assert (InvalidRequest.http_status, ValidationFailed.http_status) == (400, 422)


# --- UUIDv7 ids ---------------------------------------------------------------------------


def test_generated_ids_are_valid_uuidv7() -> None:
    value = UUIDv7Generator().new(NOW)
    parsed = uuid.UUID(value)
    assert is_uuidv7(value)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == value


def test_generated_ids_carry_the_millisecond_timestamp() -> None:
    value = UUIDv7Generator().new(NOW)
    assert int(value.replace("-", "")[:12], 16) == NOW


def test_ten_thousand_ids_in_one_millisecond_are_unique_sorted_and_valid() -> None:
    gen = UUIDv7Generator()
    ids = [gen.new(NOW) for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(is_uuidv7(i) for i in ids)


def test_ids_stay_sorted_when_the_clock_advances() -> None:
    gen = UUIDv7Generator()
    ids = [gen.new(NOW + i // 3) for i in range(3000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_ids_stay_sorted_when_the_clock_goes_backwards() -> None:
    gen = UUIDv7Generator()
    first = gen.new(NOW)
    later = [gen.new(NOW - 1000) for _ in range(100)]
    assert [first, *later] == sorted([first, *later])


def test_an_exhausted_counter_borrows_the_next_millisecond() -> None:
    gen = UUIDv7Generator()
    ids = [gen.new(NOW) for _ in range(4097)]
    assert int(ids[-1].replace("-", "")[:12], 16) == NOW + 1
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("0190a5b8-3c4d-7e5f-8a6b-1c2d3e4f5a6b", True),
        ("0190A5B8-3C4D-7E5F-8A6B-1C2D3E4F5A6B", False),
        ("0190a5b8-3c4d-4e5f-8a6b-1c2d3e4f5a6b", False),
        ("0190a5b8-3c4d-7e5f-ca6b-1c2d3e4f5a6b", False),
        ("0190a5b83c4d7e5f8a6b1c2d3e4f5a6b", False),
        ("0190a5b8-3c4d-7e5f-8a6b-1c2d3e4f5a6b\n", False),
    ],
)
def test_is_uuidv7_accepts_only_lower_case_hyphenated_v7(value: str, ok: bool) -> None:
    assert is_uuidv7(value) is ok


# --- wire timestamps ----------------------------------------------------------------------


def test_timestamps_are_formatted_in_utc_with_milliseconds_and_z() -> None:
    assert format_ms(0) == "1970-01-01T00:00:00.000Z"
    assert format_ms(NOW + 7) == "2023-11-14T22:13:20.007Z"


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14T22:13:20.5Z", NOW + 500),
        ("2023-11-14T22:13:20.123456Z", NOW + 123),
        ("2023-11-14T23:13:20+01:00", NOW),
        ("2023-11-14T21:13:20-01:00", NOW),
    ],
)
def test_rfc3339_timestamps_are_parsed_to_epoch_milliseconds(text: str, ms: int) -> None:
    assert parse_rfc3339_ms(text) == ms


def test_a_timestamp_without_an_offset_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone"):
        parse_rfc3339_ms("2023-11-14T22:13:20")


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_formatting_then_parsing_a_timestamp_gives_back_the_same_milliseconds(ms: int) -> None:
    assert parse_rfc3339_ms(format_ms(ms)) == ms
