"""Batch enqueue: body validation with the index named, in-batch duplicates, the answer."""

from __future__ import annotations

from typing import Any

import pytest

from ojs_amqp.core.batch import (
    MAX_BATCH_JOBS,
    Keyed,
    batch_response,
    parse_batch,
    resolve_in_batch,
)
from ojs_amqp.core.ids import UUIDv7Generator, is_uuidv7
from ojs_amqp.core.job import JobState
from ojs_amqp.core.unique import OnConflict, UniqueConflict, UniquePolicy
from ojs_amqp.errors import InvalidRequest, OjsError, Unsupported, ValidationFailed

NOW = 1_700_000_000_000


def ids() -> Any:
    generator = UUIDv7Generator()
    return lambda: generator.new(NOW)


def job(i: int, **extra: Any) -> dict[str, Any]:
    return {"type": "bulk.test.job", "args": [{"index": i}], "options": {"queue": "bulk"}, **extra}


def test_a_valid_batch_keeps_order_and_gets_fresh_ids() -> None:
    jobs = parse_batch({"jobs": [job(i) for i in range(10)]}, now_ms=NOW, new_id=ids())
    assert [j.args[0]["index"] for j in jobs] == list(range(10))
    assert len({j.id for j in jobs}) == 10 and all(is_uuidv7(j.id) for j in jobs)
    assert all(j.state is JobState.AVAILABLE and j.queue == "bulk" for j in jobs)


def test_the_largest_batch_is_accepted_and_one_more_is_refused() -> None:
    many = [job(i) for i in range(MAX_BATCH_JOBS)]
    assert len(parse_batch({"jobs": many}, now_ms=NOW, new_id=ids())) == MAX_BATCH_JOBS
    with pytest.raises(InvalidRequest) as caught:
        parse_batch({"jobs": [*many, job(0)]}, now_ms=NOW, new_id=ids())
    assert caught.value.details == {"field": "jobs", "count": 10_001, "max": 10_000}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([job(0)], None),
        ({"jobs": job(0)}, "jobs"),
        ({"jobs": []}, "jobs"),
        ({"jobs": [job(0)], "atomic": False}, "atomic"),
    ],
)
def test_malformed_bodies(body: Any, field: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_batch(body, now_ms=NOW, new_id=ids())
    assert caught.value.http_status == 400
    assert caught.value.details.get("field") == field
    assert caught.value.message


@pytest.mark.parametrize(
    ("bad", "error", "field"),
    [
        ({"args": [1], "options": {"queue": "bulk"}}, InvalidRequest, "jobs[37].type"),
        ({"type": "Bad Type", "args": []}, InvalidRequest, "jobs[37].type"),
        ({"type": "a.b", "args": [], "options": {"queue": "Q!"}}, InvalidRequest, "jobs[37].queue"),
        ({"type": "a.b", "args": [], "timeout_ms": -1}, ValidationFailed, "jobs[37].timeout_ms"),
        ({"type": "a.b", "args": [], "options": {"unique": {}}}, Unsupported,
         "jobs[37].options.unique"),
        ("not a job", InvalidRequest, "jobs[37]"),
    ],
)  # fmt: skip
def test_the_first_invalid_job_names_its_index(bad: Any, error: type, field: str) -> None:
    jobs: list[Any] = [job(i) for i in range(40)]
    jobs[37] = bad
    jobs[39] = {"args": []}  # a later error is not the one reported
    with pytest.raises(OjsError) as caught:
        parse_batch({"jobs": jobs}, now_ms=NOW, new_id=ids())
    assert type(caught.value) is error
    assert caught.value.details["index"] == 37
    assert caught.value.details["field"] == field
    assert caught.value.message.startswith("batch validation failed: job at index 37: ")


def test_a_repeated_client_id_is_refused() -> None:
    given = "01900000-0000-7000-8000-000000000001"
    body = {"jobs": [job(0, id=given), job(1), job(2, id=given)]}
    with pytest.raises(InvalidRequest) as caught:
        parse_batch(body, now_ms=NOW, new_id=ids())
    assert caught.value.details == {"index": 2, "field": "jobs[2].id", "same_as": 0}


def _keyed(jobs: list[Any], policy: UniquePolicy, keys: list[str]) -> list[Keyed]:
    return [Keyed(i, j, policy, k) for i, (j, k) in enumerate(zip(jobs, keys, strict=True))]


def test_duplicates_inside_one_batch() -> None:
    jobs = parse_batch({"jobs": [job(i) for i in range(4)]}, now_ms=NOW, new_id=ids())
    keys = ["a", "b", "a", "a"]
    with pytest.raises(UniqueConflict) as caught:
        resolve_in_batch(_keyed(jobs, UniquePolicy(), keys), NOW)
    assert caught.value.details["index"] == 2 and caught.value.details["existing_index"] == 0
    assert caught.value.details["existing_job_id"] == jobs[0].id
    assert "index 2" in caught.value.message
    ignore = UniquePolicy(on_conflict=OnConflict.IGNORE)
    assert resolve_in_batch(_keyed(jobs, ignore, keys), NOW) == {0: 0, 1: 1, 2: 0, 3: 0}
    replace = UniquePolicy(on_conflict=OnConflict.REPLACE)
    assert resolve_in_batch(_keyed(jobs, replace, keys), NOW) == {0: None, 1: 1, 2: None, 3: 3}
    narrow = UniquePolicy(states=frozenset({JobState.ACTIVE}))
    assert resolve_in_batch(_keyed(jobs, narrow, keys), NOW) == {0: 0, 1: 1, 2: 2, 3: 3}


def test_the_answer_shape() -> None:
    body = {"jobs": [job(0), job(1, options={"queue": "bulk", "scheduled_at": "+PT5S"})]}
    jobs = parse_batch(body, now_ms=NOW, new_id=ids())
    answer = batch_response(jobs)
    assert answer["count"] == 2
    first, second = answer["jobs"]
    assert set(first) == {"id", "type", "state", "queue", "created_at", "enqueued_at"}
    assert (first["state"], second["state"]) == ("available", "scheduled")
    assert "scheduled_at" in second and "enqueued_at" not in second
    assert [item["id"] for item in answer["jobs"]] == [j.id for j in jobs]
