"""The advance rule, cancel and start as pure functions: tables of scenarios, then properties
(any order of outcomes, any replay, any acyclic graph)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ojs_amqp.core import lifecycle
from ojs_amqp.core.job import JobState
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.core.workflow import advance
from ojs_amqp.core.workflow.model import (
    NodeState,
    WorkflowState,
    from_records,
    header_record,
    node_record,
)
from ojs_amqp.core.workflow.wire import to_wire
from ojs_amqp.errors import Conflict
from tests.unit.workflow_harness import Run, callbacks, jobs_body

C, F, X = "completed", "failed", "cancelled"

#: (body, outcomes by index in order, final workflow state, final node states)
SCENARIOS: list[tuple[str, dict[str, Any], list[tuple[int, str]], str | None, list[str]]] = [
    ("chain all complete", jobs_body("chain", 3), [(0, C), (1, C), (2, C)], "completed",
     [C, C, C]),
    ("chain stops at a failure", jobs_body("chain", 3), [(0, C), (1, F)], "failed", [C, F, X]),
    ("chain step cancelled alone", jobs_body("chain", 3), [(0, X)], "failed", [X, X, X]),
    ("chain of one", jobs_body("chain", 1), [(0, C)], "completed", [C]),
    ("group all complete", jobs_body("group", 3), [(2, C), (0, C), (1, C)], "completed",
     [C, C, C]),
    ("group waits for every job", jobs_body("group", 3), [(1, F), (0, C)], None,
     [C, F, "pending"]),
    ("group fails once all are terminal", jobs_body("group", 3), [(1, F), (0, C), (2, C)],
     "failed", [C, F, C]),
    ("batch success fires on_success and on_complete",
     jobs_body("batch", 2, **callbacks("on_success", "on_failure", "on_complete")),
     [(0, C), (1, C)], None, [C, C, "pending", "skipped", "pending"]),
    ("batch is completed once its callbacks complete",
     jobs_body("batch", 2, **callbacks("on_success", "on_failure", "on_complete")),
     [(0, C), (1, C), (2, C), (4, C)], "completed", [C, C, C, "skipped", C]),
    ("batch failure fires on_failure and on_complete",
     jobs_body("batch", 2, **callbacks("on_success", "on_failure", "on_complete")),
     [(0, C), (1, F)], None, [C, F, "skipped", "pending", "pending"]),
    ("batch with a failed job is completed by its callbacks (§8.3)",
     jobs_body("batch", 2, **callbacks("on_failure")), [(0, F), (1, C), (2, C)], "completed",
     [F, C, C]),
    ("batch fails when a callback fails", jobs_body("batch", 1, **callbacks("on_complete")),
     [(0, C), (1, F)], "failed", [C, F]),
    ("batch whose only callback is skipped", jobs_body("batch", 1, **callbacks("on_success")),
     [(0, F)], "completed", [F, "skipped"]),
]  # fmt: skip


@pytest.mark.parametrize(("body", "outcomes", "final", "nodes"), [s[1:] for s in SCENARIOS],
                         ids=[s[0] for s in SCENARIOS])  # fmt: skip
def test_scenarios(
    body: dict[str, Any], outcomes: list[tuple[int, str]], final: str | None, nodes: list[str]
) -> None:
    run = Run.of(body)
    for index, outcome in outcomes:
        run.finish(index, outcome, {"i": index})
    assert run.states() == nodes
    state = run.workflow.state
    assert state.value == (final or "running")
    ends = [t for t in run.event_types() if t in ("workflow.completed", "workflow.failed")]
    assert ends == ([] if final is None else [f"workflow.{final}"])
    assert set(run.created.values()) == {1}  # every job created once
    made = {n.job_id for n in run.workflow.nodes if n.created}
    assert set(run.created) == made


def test_chain_steps_get_every_earlier_result_by_index() -> None:
    run = Run.of(jobs_body("chain", 3))
    run.finish(0, C, {"report_id": "r-1", "row_count": 42})
    assert run.job_of(1).extra["parent_results"] == [{"report_id": "r-1", "row_count": 42}]
    run.finish(1, C, {"n": 1})
    assert run.job_of(2).extra["parent_results"] == [{"report_id": "r-1", "row_count": 42},
                                                     {"n": 1}]  # fmt: skip


def test_callbacks_get_every_result_in_index_order_null_for_failures() -> None:
    run = Run.of(jobs_body("batch", 3, **callbacks("on_complete")))
    run.finish(2, C, "two")
    run.finish(0, C, "zero")
    run.finish(1, F)
    assert run.job_of(3).extra["parent_results"] == ["zero", None, "two"]
    assert run.job_of(3).extra["workflow_step_id"] == "on_complete"


def test_dag_diamond_waits_for_both_branches() -> None:
    run = Run.of({"steps": [
        {"id": "a", "type": "d.a", "args": []},
        {"id": "b", "type": "d.b", "args": [], "depends_on": ["a"]},
        {"id": "c", "type": "d.c", "args": [], "depends_on": ["a"]},
        {"id": "d", "type": "d.d", "args": [], "depends_on": ["c", "b"]},
    ]})  # fmt: skip
    step = run.finish(0, C, "ra")
    assert [j.type for j in step.create] == ["d.b", "d.c"]
    assert run.finish(1, C, "rb").create == ()
    step = run.finish(2, C, "rc")
    assert [j.type for j in step.create] == ["d.d"]
    assert step.create[0].extra["parent_results"] == ["rc", "rb"]  # depends_on order
    run.finish(3, C)
    assert run.workflow.state is WorkflowState.COMPLETED


def test_dag_failure_cancels_everything_downstream_in_one_move() -> None:
    run = Run.of({"steps": [
        {"id": "d", "type": "d.d", "args": [], "depends_on": ["c"]},
        {"id": "c", "type": "d.c", "args": [], "depends_on": ["b"]},
        {"id": "b", "type": "d.b", "args": [], "depends_on": ["a"]},
        {"id": "a", "type": "d.a", "args": []},
    ]})  # fmt: skip
    step = run.finish(3, F)
    assert run.states() == [X, X, X, F]
    assert step.create == () and step.finished is WorkflowState.FAILED


def test_the_same_outcome_twice_changes_nothing() -> None:
    run = Run.of(jobs_body("batch", 2, **callbacks("on_complete")))
    run.finish(0, C, 1)
    before = run.workflow
    again = run.replay(run.job_of(0).id)
    assert again.noop and again.workflow is before and again.create == ()


def test_an_outcome_that_is_not_terminal_changes_nothing() -> None:
    three_tries = {"type": "t.r", "args": [], "options": {"retry": {"max_attempts": 3}}}
    run = Run.of(jobs_body("group", 1, jobs=[three_tries]))
    run.start(0)
    before = run.workflow
    active = run.job_of(0)
    retrying = lifecycle.fail(active, run.tick(), FailureReport(message="x"), lambda: 0.5)
    assert retrying.state is JobState.RETRYABLE
    assert advance.job_finished(before, retrying, run.now).workflow is before


def test_first_start_sets_started_at_and_emits_workflow_started_once() -> None:
    run = Run.of(jobs_body("group", 2))
    run.start(0)
    assert run.workflow.started_at_ms == run.now and run.states()[0] == "active"
    run.start(1)
    assert run.event_types().count("workflow.started") == 1
    assert advance.job_started(run.workflow, run.job_of(1), run.now).noop


def test_cancel_cancels_waiting_and_queued_keeps_active_and_advances_nothing_after() -> None:
    run = Run.of(jobs_body("group", 3))
    run.start(0)
    live = {j.id: j.state for j in run.jobs.values()}
    step = run.apply(advance.cancel(run.workflow, run.tick(), live))
    assert step.finished is WorkflowState.CANCELLED
    assert set(step.cancel) == {run.workflow.nodes[1].job_id, run.workflow.nodes[2].job_id}
    assert run.states() == ["active", X, X]
    # the queued jobs' own cancel outcome arrives later: already recorded
    assert run.replay(run.workflow.nodes[1].job_id).noop
    # the active job finishes: recorded on its node, nothing created, still cancelled
    done = run.finish(0, C, "late")
    assert done.create == () and run.workflow.state is WorkflowState.CANCELLED
    assert run.states() == [C, X, X]
    with pytest.raises(Conflict, match="already in terminal state 'cancelled'"):
        advance.cancel(run.workflow, run.now, {})


def test_chain_cancel_after_step_zero_cancels_the_queued_step_one() -> None:
    run = Run.of(jobs_body("chain", 3))
    run.finish(0, C, "r0")
    queued = run.workflow.nodes[1].job_id
    step = run.apply(advance.cancel(run.workflow, run.tick(), {}))
    assert step.cancel == (queued,) and run.jobs[queued].state is JobState.CANCELLED
    assert run.states() == [C, X, X]
    assert to_wire(run.workflow)["state"] == "cancelled"


def test_a_waiting_step_with_a_relative_delay_counts_it_from_its_creation() -> None:
    body = jobs_body("chain", 2)
    body["steps"][1]["options"] = {"scheduled_at": "+PT5S"}
    run = Run.of(body)
    step = run.finish(0, C)
    assert step.create[0].state is JobState.SCHEDULED
    assert step.create[0].scheduled_at_ms == run.now + 5000
    assert step.create[0].created_at_ms == run.now


# --- properties ---------------------------------------------------------------------------

OUTCOME = st.sampled_from([C, F, X])


@st.composite
def fan_outs(draw: st.DrawFn) -> tuple[dict[str, Any], list[str], list[int], list[int]]:
    """A group or batch, an outcome per job, an order to apply them in, and replays."""
    count = draw(st.integers(1, 7))
    names = draw(st.lists(st.sampled_from(["on_complete", "on_success", "on_failure"]),
                          unique=True, max_size=3))  # fmt: skip
    body = jobs_body("batch", count, **callbacks(*names)) if names else jobs_body("group", count)
    outcomes = draw(st.lists(OUTCOME, min_size=count, max_size=count))
    order = draw(st.permutations(range(count)))
    replays = draw(st.lists(st.integers(0, count - 1), max_size=4))
    return body, outcomes, list(order), replays


@settings(max_examples=200, deadline=None)
@given(fan_outs())
def test_any_order_of_a_fan_outs_outcomes_gives_one_final_state_and_each_callback_once(
    case: tuple[dict[str, Any], list[str], list[int], list[int]],
) -> None:
    body, outcomes, order, replays = case
    finals = []
    for sequence in (sorted(order), order):
        run = Run.of(body)
        for step, index in enumerate(sequence):
            run.finish(index, outcomes[index], {"i": index})
            for replay in replays:  # replays of anything already finished are no-ops
                if replay in sequence[: step + 1]:
                    assert run.replay(run.job_of(replay).id).noop
        finals.append((run.states(), run.workflow.state, run.job_results()))
        rows = [node_record(n) for n in run.workflow.nodes]
        assert from_records(header_record(run.workflow), rows) == run.workflow
        assert all(n == 1 for n in run.created.values())
    assert finals[0] == finals[1]
    states, _, _ = finals[1]
    any_failed = any(o != C for o in outcomes)
    fired = {n for n, s in zip(body.get("callbacks", {}), states[len(outcomes) :], strict=True)
             if s == "pending"}  # fmt: skip
    expected = {n for n in body.get("callbacks", {})
                if n == "on_complete" or (n == "on_failure") == any_failed}  # fmt: skip
    assert fired == expected


@st.composite
def graphs(draw: st.DrawFn) -> dict[str, Any]:
    """An acyclic DAG-dialect body: dependencies only point at earlier steps."""
    count = draw(st.integers(1, 7))
    steps = []
    for i in range(count):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        steps.append({"id": f"s{i}", "type": f"g.s{i}", "args": [],
                      "depends_on": [f"s{d}" for d in deps]})  # fmt: skip
    return {"name": "g", "steps": steps}


@settings(max_examples=200, deadline=None)
@given(graphs(), st.data())
def test_a_dag_creates_a_step_only_once_all_its_dependencies_completed(
    body: dict[str, Any], data: st.DataObject
) -> None:
    run = Run.of(body)
    while True:
        open_nodes = [n.index for n in run.workflow.nodes
                      if n.created and not run.job_of(n.index).state.terminal]  # fmt: skip
        if not open_nodes:
            break
        index = data.draw(st.sampled_from(open_nodes))
        step = run.finish(index, data.draw(OUTCOME))
        for job in step.create:
            node = run.workflow.nodes[job.extra["workflow_step"]]
            assert all(run.workflow.nodes[d].state is NodeState.COMPLETED for d in node.deps)
        assert run.replay(run.job_of(index).id).noop
        # the derived fields an advance maintains equal those computed afresh from the rows
        rows = [node_record(n) for n in run.workflow.nodes]
        assert from_records(header_record(run.workflow), rows) == run.workflow
    assert all(n.state.terminal for n in run.workflow.nodes)
    assert run.workflow.state.terminal
    assert all(n == 1 for n in run.created.values())
    ok = all(n.state is NodeState.COMPLETED for n in run.workflow.nodes)
    assert run.workflow.state is (WorkflowState.COMPLETED if ok else WorkflowState.FAILED)


def test_cancel_without_live_states_keeps_an_active_node_running() -> None:
    run = Run.of(jobs_body("group", 2))
    run.start(0)
    step = advance.cancel(run.workflow, run.tick(), {})
    assert step.cancel == (run.workflow.nodes[1].job_id,)
    assert [n.state.value for n in step.workflow.nodes] == ["active", X]


def test_cancel_leaves_a_retrying_job_of_an_active_node_cancelled() -> None:
    run = Run.of(jobs_body("group", 1))
    run.start(0)
    job_id = run.workflow.nodes[0].job_id
    step = advance.cancel(run.workflow, run.tick(), {job_id: JobState.RETRYABLE})
    assert step.cancel == (job_id,) and step.workflow.nodes[0].state is NodeState.CANCELLED


def test_a_one_megabyte_result_reaches_the_next_step_whole() -> None:
    big = {"blob": "x" * (1 << 20)}
    run = Run.of(jobs_body("chain", 2))
    run.finish(0, C, big)
    assert run.job_of(1).extra["parent_results"] == [big]


def test_two_siblings_computed_from_one_version_conflict_and_the_retry_is_exact() -> None:
    """The store's header CAS: both advances claim version v+1, so the second write fails;
    recomputed from the winner's workflow it gives what applying both in order gives."""
    run = Run.of(jobs_body("batch", 2, **callbacks("on_complete")))
    base = run.workflow
    done = []
    for index in (0, 1):
        active = lifecycle.fetch(run.job_of(index), run.tick(), "w")
        done.append(lifecycle.ack(active, run.tick(), index))
    first = advance.job_finished(base, done[0], run.now)
    second = advance.job_finished(base, done[1], run.now)
    assert first.workflow.version == second.workflow.version == base.version + 1
    assert first.create == second.create == ()  # neither alone saw both finish
    retried = advance.job_finished(first.workflow, done[1], run.now)
    assert retried.workflow.version == base.version + 2
    assert [j.extra["workflow_step_id"] for j in retried.create] == ["on_complete"]
    assert retried.create[0].extra["parent_results"] == [0, 1]
