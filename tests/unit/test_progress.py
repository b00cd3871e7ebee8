"""Progress reports (core/progress.py), the worker registry and the beat body: pure rules."""

from __future__ import annotations

import orjson
import pytest

from ojs_amqp.amqp import protocol
from ojs_amqp.amqp.control import parse_control
from ojs_amqp.core import lifecycle, progress
from ojs_amqp.core.job import Job, JobState, from_record, to_record, to_wire
from ojs_amqp.core.progress import ProgressUpdate, merge, parse_update
from ojs_amqp.engine.workers import FORGET_AFTER_MS, WorkerRegistry
from ojs_amqp.errors import InvalidRequest
from ojs_amqp.http import schemas
from ojs_amqp.sdk import control as sdk_control
from ojs_amqp.sdk.context import JobContext


def test_values_outside_the_range_are_clamped_not_refused() -> None:
    assert parse_update({"progress": 1.5}).value == 1.0
    assert parse_update({"progress": -3}).value == 0.0
    assert parse_update({"progress": 0.25, "message": "a"}) == ProgressUpdate(0.25, "a")
    assert parse_update({"percentage": 40}).value == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "progress"),
        ({"progress": "half"}, "progress"),
        ({"progress": True}, "progress"),
        ({"progress": float("nan")}, "progress"),
        ({"progress": 0.5, "message": 3}, "message"),
        ({"data": [1, 2]}, "data"),
        ({"data": {"blob": "x" * 20_000}}, "data"),
    ],
)
def test_a_report_that_is_not_one_is_refused_naming_the_field(body: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_update(body)
    assert caught.value.details["field"] == field


def test_the_number_never_goes_down_within_an_attempt_but_message_and_data_follow() -> None:
    first = merge(None, ProgressUpdate(0.6, "six", {"rows": 6}), attempt=1, now_ms=1000)
    lower = merge(first, ProgressUpdate(0.4, "four"), attempt=1, now_ms=2000)
    assert lower == {"progress": 0.6, "message": "four", "data": {"rows": 6}, "attempt": 1,
                     "updated_at_ms": 2000}  # fmt: skip
    retried = merge(lower, ProgressUpdate(0.1), attempt=2, now_ms=3000)
    assert retried["progress"] == 0.1 and retried["message"] is None and retried["data"] is None


def _job(**changes: object) -> Job:
    job = Job(id="j1", type="t.x", queue="q", args=[], state=JobState.AVAILABLE, created_at_ms=1)
    for name, value in changes.items():
        setattr(job, name, value)
    return job


def test_a_new_attempt_starts_without_progress_and_completion_sets_it_to_one() -> None:
    reported = merge(None, ProgressUpdate(0.3, "m"), attempt=1, now_ms=5)
    active = _job(state=JobState.ACTIVE, attempt=1, progress=reported)
    done = lifecycle.ack(active, 10)
    assert done.progress is not None and done.progress["progress"] == 1.0
    assert done.progress["message"] == "m"
    assert lifecycle.ack(_job(state=JobState.ACTIVE, attempt=1), 10).progress is None
    again = lifecycle.fetch(_job(progress=reported, attempt=1), 20, "w")
    assert again.progress is None and again.attempt == 2


def test_progress_survives_the_store_record_and_is_on_the_wire_with_nulls() -> None:
    reported = merge(None, ProgressUpdate(0.5), attempt=1, now_ms=1_700_000_000_000)
    job = _job(state=JobState.ACTIVE, attempt=1, progress=reported)
    assert from_record(orjson.loads(orjson.dumps(to_record(job)))).progress == reported
    assert to_wire(job)["progress"] == {
        "progress": 0.5, "message": None, "data": None, "updated_at": "2023-11-14T22:13:20.000Z",
    }  # fmt: skip
    assert "progress" not in to_wire(_job())
    assert progress.to_wire(None) == {
        "progress": None, "message": None, "data": None, "updated_at": None,
    }  # fmt: skip


def test_the_amqp_progress_message_parses_into_a_report_and_bad_ones_are_refused() -> None:
    body = sdk_control.progress("j1", "w1", {"progress": 2, "message": "m"}, None)
    parsed = parse_control(protocol.PROGRESS, body)
    assert parsed.job_id == "j1" and parsed.worker_id == "w1"
    assert parsed.progress == ProgressUpdate(1.0, "m")
    with pytest.raises(InvalidRequest):
        parse_control(protocol.PROGRESS, b'{"job_id": "j1"}')
    with pytest.raises(InvalidRequest):
        parse_control(protocol.PROGRESS, b'{"progress": 0.5}')


def test_ctx_progress_keeps_only_the_latest_report_and_refuses_bad_ones_at_once() -> None:
    ctx = JobContext(id="j", type="t", queue="q", args=[], attempt=1, worker_id="w", envelope={})
    ctx.progress(0.1)
    ctx.progress(0.2, "two", {"n": 2})
    assert ctx.pending_progress == {"progress": 0.2, "message": "two", "data": {"n": 2}}
    with pytest.raises(InvalidRequest):
        ctx.progress()
    with pytest.raises(InvalidRequest):
        ctx.progress(data=["no"])  # type: ignore[arg-type]


def test_a_draining_worker_gets_no_jobs_until_it_runs_again_and_is_forgotten_later() -> None:
    workers = WorkerRegistry()
    assert workers.fetching("w1")  # never seen: nothing stops it
    assert workers.beat("w1", "draining", 2, now_ms=1000) == "drain"
    assert not workers.fetching("w1")
    workers.seen("w1", 2000)  # a fetch does not change the announced state
    assert not workers.fetching("w1") and workers.counts() == {"drain": 1}
    assert workers.beat("w1", "running", 0, now_ms=3000) == "running" and workers.fetching("w1")
    workers.beat("w2", None, None, now_ms=3000 + FORGET_AFTER_MS + 1)
    assert workers.get("w1") is None and workers.get("w2") is not None


def test_the_beat_body_takes_a_count_or_a_list_of_jobs() -> None:
    counted = schemas.parse(schemas.BeatIn, {"worker_id": "w", "state": "drain", "active_jobs": 2})
    assert counted.job_count() == 2 and counted.job_ids() == []
    listed = schemas.parse(schemas.BeatIn, {"worker_id": "w", "active_jobs": ["a", "b"]})
    assert listed.job_count() == 2 and listed.job_ids() == ["a", "b"]
    with pytest.raises(InvalidRequest):
        schemas.parse(schemas.BeatIn, {"state": "drain"})
