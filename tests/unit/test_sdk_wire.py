"""Envelopes the SDK sends and reads back, and how `push` routes each job (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ojs_amqp.core.envelope import parse_enqueue
from ojs_amqp.core.job import Job, JobState, to_wire
from ojs_amqp.core.times import format_ms
from ojs_amqp.errors import InvalidRequest, Unsupported, ValidationFailed
from ojs_amqp.sdk.client import Client, needs_daemon
from ojs_amqp.sdk.wire import job_from_wire, request_envelope, submission_envelope

NOW = 1_800_000_000_000
ID = "019a0000-0000-7000-8000-000000000001"


def _client() -> Client:
    return Client(clock=lambda: NOW)


def test_delay_becomes_an_absolute_scheduled_at() -> None:
    for delay in (timedelta(seconds=90), 90, 90.0, "PT90S"):
        body = request_envelope("a.b", [], "q", {"delay": delay}, NOW)
        assert body["scheduled_at"] == format_ms(NOW + 90_000)


def test_datetimes_become_rfc3339_and_naive_ones_are_refused() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    body = request_envelope("a.b", [], "q", {"expires_at": when}, NOW)
    assert body["expires_at"] == "2030-01-02T03:04:05.678Z"
    with pytest.raises(InvalidRequest, match="timezone"):
        request_envelope("a.b", [], "q", {"scheduled_at": datetime(2030, 1, 1)}, NOW)


@pytest.mark.parametrize(
    "options",
    [{"delay": 1, "scheduled_at": "2030-01-01T00:00:00Z"}, {"delay": -1}, {"delay": [1]}],
)
def test_bad_delays_are_invalid_requests(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        request_envelope("a.b", [], "q", options, NOW)


def test_args_must_be_a_list_not_a_string() -> None:
    with pytest.raises(InvalidRequest, match="args"):
        request_envelope("a.b", "abc", "q", {}, NOW)  # type: ignore[arg-type]
    assert request_envelope("a.b", (1, 2), "q", {}, NOW)["args"] == [1, 2]


def test_build_raises_the_http_apis_errors() -> None:
    client = _client()
    with pytest.raises(InvalidRequest):
        client.build("Not A Type")
    with pytest.raises(InvalidRequest, match="reserved"):
        client.build("a.b", queue="control.x")
    with pytest.raises(ValidationFailed):
        client.build("a.b", retry={"max_attempts": -1})


@pytest.mark.parametrize(
    ("options", "binding_push"),
    [
        ({}, True),
        ({"scheduled_at": format_ms(NOW - 1000)}, True),  # already due: runs now
        ({"expires_at": format_ms(NOW + 60_000)}, True),
        ({"priority": 10, "retry": {"max_attempts": 5}}, True),
        ({"delay": 5}, False),
        ({"scheduled_at": format_ms(NOW + 1000)}, False),
        ({"pending": True}, False),
    ],
)
def test_only_jobs_that_can_run_now_go_by_binding_push(
    options: dict[str, Any], binding_push: bool
) -> None:
    job = _client().build("a.b", [1], "q", **options)
    assert needs_daemon(job) is not binding_push


def test_a_unique_job_is_refused_before_anything_is_sent_while_unique_jobs_are_off() -> None:
    with pytest.raises(Unsupported, match="unique jobs"):
        _client().build("a.b", [1], "q", unique={"keys": ["args"]})


def _reparsed(job: Job) -> Job:
    return parse_enqueue(submission_envelope(job), now_ms=NOW + 5, new_id="unused")


@pytest.mark.parametrize(
    "options",
    [
        {"delay": 30, "retry": {"max_attempts": 7, "initial_interval": "PT2S"}},
        {"pending": True, "meta": {"k": "v"}, "tags": ["t"]},
        {"priority": -5, "timeout_ms": 5000},
        {"scheduled_at": "2031-05-06T07:08:09+02:00", "expires_at": "+PT1H", "x-custom": 1},
    ],
)
def test_the_daemon_parses_a_submission_back_into_the_same_job(options: dict[str, Any]) -> None:
    job = _client().build("a.b", [1, {"x": 2}], "q", id=ID, **options)
    again = _reparsed(job)
    assert again.state is job.state
    for name in (
        "id", "type", "queue", "args", "meta", "priority", "retry", "timeout_ms", "tags",
        "unique", "scheduled_at_ms", "expires_at_ms", "extra",
    ):  # fmt: skip
        assert getattr(again, name) == getattr(job, name), name
    for name in ("scheduled_at", "expires_at"):  # echoed as the client wrote them
        assert to_wire(again).get(name) == to_wire(job).get(name)


def test_job_from_wire_reads_back_what_to_wire_writes() -> None:
    job = _client().build(
        "a.b", [1], "q", id=ID, scheduled_at="2031-05-06T07:08:09+02:00", meta={"m": 1},
        tags=["t"], retry={"max_attempts": 2, "on_exhaustion": "dead_letter"},
    )  # fmt: skip
    job.state = JobState.COMPLETED
    job.attempt = 1
    job.result = {"ok": True}
    job.completed_at_ms = NOW + 10
    job.errors = [{"code": "x", "message": "m"}]
    job.extra = {"x-custom": [1]}
    wire = to_wire(job)
    back = job_from_wire(wire)
    assert to_wire(back) == wire
    assert back.state is JobState.COMPLETED and back.result == {"ok": True}
    assert back.retry == job.retry


def test_job_from_wire_without_result_keeps_it_absent() -> None:
    wire = to_wire(_client().build("a.b", [], "q", id=ID))
    assert "result" not in to_wire(job_from_wire(wire))
