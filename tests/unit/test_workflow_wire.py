"""The GET shape: the suite's counters and the spec's, per node state, errors and times."""

from __future__ import annotations

from typing import Any

import pytest

from ojs_amqp.core.times import format_ms
from ojs_amqp.core.workflow import advance
from ojs_amqp.core.workflow.wire import to_wire
from tests.unit.workflow_harness import T0, Run, callbacks, jobs_body

#: kind -> (the suite's counter names, where the nodes are listed)
NAMES = {
    "chain": ("steps_total", "steps_completed", "steps"),
    "group": ("jobs_total", "jobs_completed", "jobs"),
    "batch": ("jobs_total", "jobs_completed", "jobs"),
}


@pytest.mark.parametrize("kind", sorted(NAMES))
def test_counters_under_the_suites_names_and_the_specs(kind: str) -> None:
    extra = callbacks("on_complete") if kind == "batch" else {}
    run = Run.of(jobs_body(kind, 3, **extra))
    total, completed, listed = NAMES[kind]
    out = to_wire(run.workflow)
    assert (out["type"], out["state"], out[total], out[completed]) == (kind, "running", 3, 0)
    run.finish(0, "completed", {"r": 0})
    out = to_wire(run.workflow)
    assert out[completed] == 1 and len(out[listed]) == 3  # a batch's callbacks are apart
    meta = out["metadata"]
    assert (meta["job_count"], meta["completed_count"], meta["failed_count"]) == (3, 1, 0)
    assert meta["created_at"] == out["created_at"] == format_ms(T0)
    assert out[listed][0]["result"] == {"r": 0}


def test_a_waiting_step_has_no_job_id_yet_and_a_created_one_does() -> None:
    run = Run.of(jobs_body("chain", 2))
    steps = to_wire(run.workflow)["steps"]
    assert steps[0]["job_id"] == run.workflow.nodes[0].job_id and steps[0]["state"] == "pending"
    assert steps[1] == {"index": 1, "type": "t.j1", "state": "waiting", "job_id": None}


def test_a_failed_chain_reports_its_step_errors_and_ids() -> None:
    run = Run.of(jobs_body("chain", 3))
    run.finish(0, "completed")
    run.finish(1, "failed")
    out = to_wire(run.workflow)
    failed_id = run.workflow.nodes[1].job_id
    assert out["state"] == "failed" and out["failed_step_index"] == 1
    assert out["failed_job_ids"] == [failed_id]
    (error,) = out["errors"]
    assert error["job_id"] == failed_id and error["code"] == "handler_error"
    assert error["message"] == "boom" and error["attempt"] == 1
    assert out["steps_completed"] == 1 and out["steps_total"] == 3
    assert [s["state"] for s in out["steps"]] == ["completed", "failed", "cancelled"]
    assert "completed_at" in out and "completed_at" in out["metadata"]


def test_batch_callbacks_are_listed_by_name() -> None:
    run = Run.of(jobs_body("batch", 1, **callbacks("on_success", "on_failure")))
    run.finish(0, "completed")
    cbs = to_wire(run.workflow)["callbacks"]
    assert cbs["on_success"]["state"] == "pending" and cbs["on_success"]["job_id"] is not None
    assert cbs["on_failure"]["state"] == "skipped" and cbs["on_failure"]["job_id"] is None
    assert cbs["on_success"]["callback_type"] == "on_success"


def test_the_dag_dialect_reads_back_as_the_python_sdk_parses_it() -> None:
    """The SDK's Workflow.from_dict needs id, name, state and, per step, id and type."""
    body: dict[str, Any] = {"name": "sdk", "steps": [
        {"id": "a", "type": "x.a", "args": [], "depends_on": []},
        {"id": "b", "type": "x.b", "args": [], "depends_on": ["a"]},
    ]}  # fmt: skip
    out = to_wire(Run.of(body).workflow)
    assert (out["name"], out["state"], out["type"]) == ("sdk", "running", "dag")
    assert [(s["id"], s["type"], s["depends_on"]) for s in out["steps"]] == [
        ("a", "x.a", []), ("b", "x.b", ["a"]),
    ]  # fmt: skip
    assert out["steps_total"] == 2


def test_a_cancelled_workflow_counts_what_it_cancelled() -> None:
    run = Run.of(jobs_body("chain", 3))
    run.finish(0, "completed")
    run.apply(advance.cancel(run.workflow, run.tick(), {}))
    out = to_wire(run.workflow)
    assert out["state"] == "cancelled" and out["cancelled_at"] == format_ms(run.now)
    assert (out["steps_cancelled"], out["steps_already_completed"]) == (2, 1)
    assert out["metadata"]["cancelled_count"] == 2
