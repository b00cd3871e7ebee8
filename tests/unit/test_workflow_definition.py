"""Parsing `POST /ojs/v1/workflows` bodies: every dialect, and every refusal naming its path."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ojs_amqp.core.envelope import UNHONOURED_OPTIONS
from ojs_amqp.core.ids import UUIDv7Generator, is_uuidv7
from ojs_amqp.core.job import JobState
from ojs_amqp.core.workflow.definition import MAX_NODES, Created, parse_workflow
from ojs_amqp.core.workflow.model import (
    NodeKind,
    NodeState,
    Trigger,
    WorkflowKind,
    WorkflowState,
    from_records,
    header_record,
    node_record,
)
from ojs_amqp.errors import InvalidWorkflow, OjsError, Unsupported

T0 = 1_700_000_000_000


def parse(body: Any, now_ms: int = T0) -> Created:
    ids = UUIDv7Generator()
    return parse_workflow(body, now_ms=now_ms, new_id=lambda: ids.new(now_ms))


def job(kind: str = "a.job", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "args": [1], **extra}


def test_chain_creates_only_its_first_step_and_fixes_every_id() -> None:
    created = parse({"type": "chain", "name": "c", "steps": [job("s.zero"), job("s.one"),
                                                             job("s.two")]})  # fmt: skip
    wf = created.workflow
    assert wf.kind is WorkflowKind.CHAIN and wf.state is WorkflowState.RUNNING
    assert is_uuidv7(wf.id) and wf.name == "c"
    assert [n.state for n in wf.nodes] == [NodeState.PENDING, NodeState.WAITING, NodeState.WAITING]
    assert [n.deps for n in wf.nodes] == [(), (0,), (1,)]
    assert [j.id for j in created.jobs] == [wf.nodes[0].job_id]
    assert len({n.job_id for n in wf.nodes} | {wf.id}) == 4
    first = created.jobs[0]
    assert first.state is JobState.AVAILABLE and first.type == "s.zero"
    assert first.extra == {"workflow_id": wf.id, "workflow_step": 0, "parent_results": []}
    assert [e.type for e in created.events] == ["workflow.created"]


def test_group_creates_every_job_in_array_order() -> None:
    created = parse({"type": "group", "jobs": [job("g.a"), job("g.b"), job("g.c")]})
    assert [j.type for j in created.jobs] == ["g.a", "g.b", "g.c"]
    assert all(n.state is NodeState.PENDING and n.deps == () for n in created.workflow.nodes)


def test_batch_callbacks_wait_for_every_job_and_keep_their_own_options() -> None:
    created = parse({"type": "batch", "jobs": [job(), job()], "callbacks": {
        "on_failure": job("cb.fail", options={"queue": "cbq", "retry": {"max_attempts": 2}}),
        "on_success": job("cb.ok"),
    }})  # fmt: skip
    wf = created.workflow
    callbacks = wf.callbacks
    assert [(c.name, c.trigger, c.deps) for c in callbacks] == [
        ("on_failure", Trigger.ON_FAILURE, (0, 1)),
        ("on_success", Trigger.ON_SUCCESS, (0, 1)),
    ]
    template = callbacks[0].template
    assert template is not None and template.queue == "cbq" and template.max_attempts == 2
    assert len(created.jobs) == 2


def test_the_sdk_dag_dialect_maps_ids_dependencies_and_callback_type() -> None:
    created = parse({"name": "sdk-batch", "steps": [
        {"id": "step-0", "type": "x.a", "args": [], "depends_on": []},
        {"id": "step-1", "type": "x.b", "args": [], "depends_on": []},
        {"id": "on_complete", "type": "x.done", "args": [], "depends_on": ["step-0", "step-1"],
         "options": {"callback_type": "on_complete", "queue": "cb"}},
    ], "options": {"queue": "work"}})  # fmt: skip
    wf = created.workflow
    assert wf.kind is WorkflowKind.DAG
    assert [n.kind for n in wf.nodes] == [NodeKind.JOB, NodeKind.JOB, NodeKind.CALLBACK]
    assert wf.nodes[2].deps == (0, 1) and wf.nodes[2].trigger is Trigger.ON_COMPLETE
    assert [j.queue for j in created.jobs] == ["work", "work"]  # the workflow's default options
    template = wf.nodes[2].template
    assert template is not None and template.queue == "cb"  # a step's own options win
    assert "callback_type" not in template.extra
    assert created.jobs[0].extra["workflow_step_id"] == "step-0"


def test_a_diamond_is_accepted_and_its_roots_created() -> None:
    created = parse({"steps": [
        {"id": "a", "type": "d.a", "args": []},
        {"id": "b", "type": "d.b", "args": [], "depends_on": ["a"]},
        {"id": "c", "type": "d.c", "args": [], "depends_on": ["a"]},
        {"id": "d", "type": "d.d", "args": [], "depends_on": ["b", "c"]},
    ]})  # fmt: skip
    assert [j.type for j in created.jobs] == ["d.a"]
    assert created.workflow.nodes[3].deps == (1, 2)


def test_a_client_workflow_id_is_kept_and_relative_times_count_from_creation() -> None:
    wf_id = UUIDv7Generator().new(T0)
    steps = [job(options={"scheduled_at": "+PT5S"}), job(options={"scheduled_at": "PT10S"})]
    created = parse({"type": "chain", "id": wf_id, "steps": steps})
    assert created.workflow.id == wf_id
    assert created.jobs[0].state is JobState.SCHEDULED
    assert created.jobs[0].scheduled_at_ms == T0 + 5000


def test_the_storage_form_round_trips() -> None:
    wf = parse({"type": "batch", "name": "n", "jobs": [job(), job()],
                "callbacks": {"on_complete": job("cb.x")}}).workflow  # fmt: skip
    rows = [node_record(n) for n in reversed(wf.nodes)]
    assert from_records(header_record(wf), rows) == wf
    with pytest.raises(ValueError, match="node_count"):
        from_records(header_record(wf), rows[:-1])


#: Any option push refuses (the first in the table, so the row survives features landing).
UNHONOURED = next(iter(UNHONOURED_OPTIONS))

CYCLE = {"steps": [
    {"id": "a", "type": "x.a", "args": [], "depends_on": ["c"]},
    {"id": "b", "type": "x.b", "args": [], "depends_on": ["a"]},
    {"id": "c", "type": "x.c", "args": [], "depends_on": ["b"]},
    {"id": "d", "type": "x.d", "args": []},
]}  # fmt: skip

#: body -> (error class, the path it names, a phrase of its message)
REFUSED: list[tuple[Any, type[OjsError], str, str]] = [
    ([], InvalidWorkflow, "$", "JSON object"),
    ({"jobs": [job()]}, InvalidWorkflow, "type", "type is required"),
    ({"type": "dagger", "steps": [job()]}, InvalidWorkflow, "type", "chain, group or batch"),
    ({"type": "chain", "steps": []}, InvalidWorkflow, "steps", "non-empty"),
    ({"type": "chain", "jobs": [job()]}, InvalidWorkflow, "jobs", "a chain"),
    ({"type": "group", "jobs": [job()], "callbacks": {}}, InvalidWorkflow, "callbacks", "batch"),
    ({"type": "batch", "jobs": [job()]}, InvalidWorkflow, "callbacks", "needs callbacks"),
    ({"type": "batch", "jobs": [job()], "callbacks": {"on_done": job()}}, InvalidWorkflow,
     "callbacks.on_done", "unknown callback"),
    ({"type": "group", "jobs": [job(), job(), {"args": []}]}, InvalidWorkflow, "jobs[2].type",
     "Field required"),
    ({"type": "group", "jobs": [job(), "x"]}, InvalidWorkflow, "jobs[1]", "job object"),
    ({"type": "chain", "steps": [job("Bad")]}, InvalidWorkflow, "steps[0].type", "invalid"),
    ({"type": "chain", "steps": [job(options={"retry": {"on_exhaustion": "keep"}})]},
     InvalidWorkflow, "steps[0]", "on_exhaustion"),
    # an option the daemon refuses on a push is refused in a workflow's job the same way
    ({"type": "group", "jobs": [job(options={UNHONOURED: {}})]}, Unsupported, "jobs[0]",
     UNHONOURED),
    ({"type": "batch", "jobs": [job()], "callbacks": {"on_success": {"type": "x"}}},
     InvalidWorkflow, "callbacks.on_success.args", "Field required"),
    ({"type": "chain", "steps": [{"type": "group", "jobs": [job()]}]}, InvalidWorkflow,
     "steps[0]", "nesting is not supported"),
    ({"type": "group", "jobs": [{"type": "chain", "steps": [job()]}]}, InvalidWorkflow,
     "jobs[0]", "maximum depth 1"),
    ({"type": "chain", "id": "nope", "steps": [job()]}, InvalidWorkflow, "id", "UUIDv7"),
    ({"type": "chain", "name": 7, "steps": [job()]}, InvalidWorkflow, "name", "string"),
    ({"type": "chain", "steps": [job()], "priority": 3}, InvalidWorkflow, "priority", "unknown"),
    ({"type": "chain", "steps": [job()], "options": []}, InvalidWorkflow, "options", "object"),
    ({"type": "group", "jobs": [job(id="0190a5b8-3c4d-7e5f-8a6b-1c2d3e4f5a6b"),
                                job(id="0190a5b8-3c4d-7e5f-8a6b-1c2d3e4f5a6b")]},
     InvalidWorkflow, "[1].id", "same id"),
    (CYCLE, InvalidWorkflow, "steps[0].depends_on", "a -> c -> b -> a (each depends on the next)"),
    ({"steps": [{"type": "x.a", "args": []}]}, InvalidWorkflow, "steps[0].id", "needs an id"),
    ({"steps": [{"id": "a", "type": "x.a", "args": []}, {"id": "a", "type": "x.b", "args": []}]},
     InvalidWorkflow, "steps[1].id", "also the id"),
    ({"steps": [{"id": "a", "type": "x.a", "args": [], "depends_on": ["zz"]}]}, InvalidWorkflow,
     "steps[0].depends_on[0]", "no step"),
    ({"steps": [{"id": "a", "type": "x.a", "args": [], "depends_on": ["a"]}]}, InvalidWorkflow,
     "steps[0].depends_on[0]", "itself"),
    ({"steps": [{"id": "a", "type": "x.a", "args": []},
                {"id": "b", "type": "x.a", "args": [], "depends_on": ["a", "a"]}]},
     InvalidWorkflow, "steps[1].depends_on[1]", "twice"),
    ({"steps": [{"id": "a", "type": "x.a", "args": [], "depends_on": "a"}]}, InvalidWorkflow,
     "steps[0].depends_on", "array"),
    ({"steps": [{"id": "a", "type": "x.a", "args": [], "options": {"callback_type": "on_x"}}]},
     InvalidWorkflow, "steps[0].options.callback_type", "one of"),
    ({"steps": [{"id": "a", "type": "x.a", "args": [],
                 "options": {"callback_type": "on_success"}}]},
     InvalidWorkflow, "steps[0].depends_on", "at least one"),
    ({"type": "group", "jobs": [job()] * (MAX_NODES + 1)}, InvalidWorkflow, "jobs", "at most"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "error", "path", "phrase"), REFUSED)
def test_refusals_name_the_path(body: Any, error: type[OjsError], path: str, phrase: str) -> None:
    with pytest.raises(error) as caught:
        parse(body)
    assert type(caught.value) is error
    assert caught.value.details["path"] == path
    assert phrase in caught.value.message
    if error is InvalidWorkflow:
        assert caught.value.code == "invalid_workflow" and caught.value.http_status == 400


def test_client_workflow_fields_in_a_step_are_replaced() -> None:
    created = parse({"type": "group", "jobs": [
        job(parent_results=["forged"], workflow_id="other", note="kept")]})  # fmt: skip
    extra = created.jobs[0].extra
    assert extra["parent_results"] == [] and extra["workflow_id"] == created.workflow.id
    assert extra["note"] == "kept"


def test_ids_come_from_the_source_passed_in() -> None:
    counter = itertools.count(1)
    ids = [f"0190a5b8-3c4d-7e5f-8a6b-{n:012x}" for n in range(1, 10)]
    created = parse_workflow({"type": "chain", "steps": [job(), job()]}, now_ms=T0,
                             new_id=lambda: ids[next(counter) - 1])  # fmt: skip
    assert created.workflow.id == ids[0]
    assert [n.job_id for n in created.workflow.nodes] == ids[1:3]
