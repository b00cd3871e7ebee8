"""The pure moves of a workflow: a job started, a job finished, the workflow was cancelled.

Each returns an `Advance`: the new workflow (its version bumped), the nodes that changed, the
jobs to create in the same commit, the queued jobs to cancel in it, and the events to emit
after it. A move that changes nothing returns the workflow it was given and no effects, so
the same outcome heard twice (a redelivered report, a dead-letter archive of a discard
already recorded) is a no-op by construction: a node moves out of a terminal state never.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ojs_amqp.core.job import MISSING, Job, JobState
from ojs_amqp.core.workflow.model import (
    Node,
    NodeKind,
    NodeState,
    Workflow,
    WorkflowEvent,
    WorkflowKind,
    WorkflowState,
    revise,
)
from ojs_amqp.core.workflow.spawn import spawn
from ojs_amqp.errors import Conflict

#: How a finished job's state reads as a node's (a retryable job has not finished).
_FINISHED = {
    JobState.COMPLETED: NodeState.COMPLETED,
    JobState.DISCARDED: NodeState.FAILED,
    JobState.CANCELLED: NodeState.CANCELLED,
}
_QUEUED = frozenset({JobState.SCHEDULED, JobState.AVAILABLE, JobState.PENDING, JobState.RETRYABLE})
#: A created job's state as its node tells it, when the caller does not know better.
_LIKELY = {NodeState.WAITING: JobState.AVAILABLE, NodeState.PENDING: JobState.AVAILABLE,
           NodeState.ACTIVE: JobState.ACTIVE}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Advance:
    workflow: Workflow
    #: Indices of the nodes whose rows changed (the header changes whenever any does).
    changed: tuple[int, ...] = ()
    #: Jobs to insert in the same commit (as unpublished outbox rows), in index order.
    create: tuple[Job, ...] = ()
    #: Queued jobs to move to `cancelled` in the same commit (a workflow cancel).
    cancel: tuple[str, ...] = ()
    events: tuple[WorkflowEvent, ...] = ()

    @property
    def noop(self) -> bool:
        """Nothing to write: the store keeps the workflow as it is."""
        return not self.changed and not self.events

    @property
    def finished(self) -> WorkflowState | None:
        """The terminal state the workflow reached in this move, if it did."""
        done = any(e.type in _ENDS for e in self.events)
        return self.workflow.state if done else None


_ENDS = frozenset({"workflow.completed", "workflow.failed", "workflow.cancelled"})


def job_started(workflow: Workflow, job: Job, now_ms: int) -> Advance:
    """A node's job began an attempt: pending -> active (later attempts change nothing)."""
    node = workflow.node_of(job.id, job.extra.get("workflow_step"))
    if node is None or node.state is not NodeState.PENDING:
        return Advance(workflow)
    nodes = list(workflow.nodes)
    nodes[node.index] = revise(node, state=NodeState.ACTIVE, started_at_ms=now_ms)
    events = _first_start(workflow, now_ms)
    started = workflow.started_at_ms if workflow.started_at_ms is not None else now_ms
    new = revise(workflow, nodes=tuple(nodes), started_at_ms=started, version=workflow.version + 1)
    return Advance(new, changed=(node.index,), events=events)


def job_finished(workflow: Workflow, job: Job, now_ms: int) -> Advance:
    """A node's job reached a terminal state: record it, create what it unblocks, and end
    the workflow when every node is terminal. After a cancel, the outcome is recorded on its
    node and advances nothing."""
    node = workflow.node_of(job.id, job.extra.get("workflow_step"))
    state = _FINISHED.get(job.state)
    if node is None or state is None or node.state.terminal or not node.created:
        return Advance(workflow)
    board = _Board(workflow)
    board.put(revise(
        node, state=state, result=job.result if state is NodeState.COMPLETED else MISSING,
        error=job.error if state is not NodeState.COMPLETED else None, attempt=job.attempt,
        started_at_ms=node.started_at_ms or job.started_at_ms, finished_at_ms=now_ms,
    ))  # fmt: skip
    events = [] if job.started_at_ms is None else list(_first_start(workflow, job.started_at_ms))
    events.append(_step_event(workflow, board.nodes[node.index]))
    started = workflow.started_at_ms
    if started is None and job.started_at_ms is not None:
        started = job.started_at_ms
    workflow = revise(workflow, started_at_ms=started, version=workflow.version + 1)
    if workflow.state is WorkflowState.RUNNING:
        board.settle(workflow, now_ms, events)
    new = board.written(workflow)
    if workflow.state is WorkflowState.RUNNING and new.open_nodes == 0:
        new = revise(new, state=_ending(new), finished_at_ms=now_ms)
        events.append(_end_event(new, now_ms))
    return Advance(new, changed=board.changed_indices(), create=board.created_jobs(),
                   events=tuple(events))  # fmt: skip


def cancel(workflow: Workflow, now_ms: int, live: Mapping[str, JobState]) -> Advance:
    """Cancel a running workflow in one commit: waiting nodes are cancelled, and so are the
    jobs of queued ones (`live` is the current state of each created job; for a job missing
    from it, the node's own state is used). Active jobs may finish; their outcome advances
    nothing."""
    if workflow.state.terminal:
        raise Conflict(
            f"workflow {workflow.id} is already in terminal state '{workflow.state.value}'",
            details={"workflow_id": workflow.id, "current_state": workflow.state.value},
        )  # fmt: skip
    board = _Board(workflow)
    to_cancel: list[str] = []
    for node in workflow.nodes:
        if node.state.terminal:
            continue
        live_state = live.get(node.job_id, _LIKELY[node.state])
        if node.created and live_state not in _QUEUED:
            continue  # active (it may finish), or terminal already (its outcome is recorded)
        if node.created:
            to_cancel.append(node.job_id)
        board.put(revise(board.nodes[node.index], state=NodeState.CANCELLED,
                          finished_at_ms=now_ms))  # fmt: skip
    new = board.written(revise(
        workflow, state=WorkflowState.CANCELLED, finished_at_ms=now_ms, cancelled_at_ms=now_ms,
        version=workflow.version + 1,
    ))  # fmt: skip
    event = WorkflowEvent("workflow.cancelled", workflow.id, {
        **_about(workflow), "steps_cancelled": len(board.changed),
    })  # fmt: skip
    return Advance(new, changed=board.changed_indices(), cancel=tuple(to_cancel), events=(event,))


class _Board:
    """The nodes one move is changing. A node that turns terminal releases its dependents
    (their open_deps drop), so settling visits only what the move can unblock."""

    def __init__(self, workflow: Workflow) -> None:
        self.nodes = list(workflow.nodes)
        self.changed: set[int] = set()
        self.closed = 0
        self._released: list[int] = []
        self._created: list[Job] = []

    def put(self, node: Node) -> None:
        before = self.nodes[node.index]
        self.nodes[node.index] = node
        self.changed.add(node.index)
        if node.state.terminal and not before.state.terminal:
            self.closed += 1
            for index in node.dependents:
                after = self.nodes[index]
                after = revise(after, open_deps=after.open_deps - 1)
                self.nodes[index] = after
                if after.open_deps == 0:
                    self._released.append(index)

    def settle(self, workflow: Workflow, now_ms: int, events: list[WorkflowEvent]) -> None:
        """Decide every waiting node whose dependencies are now all terminal: it runs (its job
        is created) or, if its condition fails, is cancelled or skipped, which may release
        the next ones (a chain's failure cancels every later step in this one move)."""
        while self._released:
            node = self.nodes[self._released.pop()]
            if node.state is not NodeState.WAITING:
                continue
            deps = [self.nodes[d] for d in node.deps]
            if not _runs(node, deps):
                callback = node.kind is NodeKind.CALLBACK
                blocked = NodeState.SKIPPED if callback else NodeState.CANCELLED
                self.put(revise(node, state=blocked, finished_at_ms=now_ms))
                continue
            job, pending = spawn(revise(workflow, nodes=tuple(self.nodes)), node, now_ms)
            self.put(pending)
            self._created.append(job)
            if node.kind is NodeKind.CALLBACK:
                events.append(WorkflowEvent("workflow.callback_fired", workflow.id, {
                    **_about(workflow), "callback": node.name, "job_id": node.job_id,
                }))  # fmt: skip

    def written(self, workflow: Workflow) -> Workflow:
        return revise(workflow, nodes=tuple(self.nodes),
                       open_nodes=workflow.open_nodes - self.closed)  # fmt: skip

    def changed_indices(self) -> tuple[int, ...]:
        return tuple(sorted(self.changed))

    def created_jobs(self) -> tuple[Job, ...]:
        return tuple(sorted(self._created, key=lambda j: j.extra["workflow_step"]))


def _runs(node: Node, deps: list[Node]) -> bool:
    """A step needs every dependency completed; a callback, its trigger to hold."""
    any_failed = any(d.state is not NodeState.COMPLETED for d in deps)
    if node.trigger is None:
        return not any_failed
    return node.trigger.fires(any_failed)


def _ending(workflow: Workflow) -> WorkflowState:
    """With callbacks (a batch), the callbacks that ran decide (§8.3: completed once every
    triggered callback completed, failed if one failed); without, any job that did not
    complete fails the workflow (§4.3 for chains, §8.3 for groups)."""
    callbacks = workflow.callbacks
    judged = [c for c in callbacks if c.state is not NodeState.SKIPPED] if callbacks else None
    if judged is None:
        judged = list(workflow.nodes)
    ok = all(n.state is NodeState.COMPLETED for n in judged)
    return WorkflowState.COMPLETED if ok else WorkflowState.FAILED


def _first_start(workflow: Workflow, at_ms: int) -> tuple[WorkflowEvent, ...]:
    if workflow.started_at_ms is not None:
        return ()
    return (WorkflowEvent("workflow.started", workflow.id, {
        **_about(workflow), "total_steps": len(workflow.nodes), "started_at_ms": at_ms,
    }),)  # fmt: skip


def _about(workflow: Workflow) -> dict[str, Any]:
    return {"workflow_id": workflow.id, "workflow_name": workflow.name,
            "workflow_type": workflow.kind.value}  # fmt: skip


def _step_event(workflow: Workflow, node: Node) -> WorkflowEvent:
    """`step_*` for chains and the DAG dialect, `job_*` for group and batch jobs and callbacks."""
    steps = workflow.kind in (WorkflowKind.CHAIN, WorkflowKind.DAG)
    done = node.state is NodeState.COMPLETED
    kind = ("step_" if steps else "job_") + ("completed" if done else "failed")
    remaining = workflow.open_nodes - 1  # the workflow as it was: this node still open
    data: dict[str, Any] = {
        **_about(workflow), "step_index": node.index, "step_id": node.name or str(node.index),
        "step_type": node.job_type, "job_id": node.job_id, "state": node.state.value,
        "remaining_steps": max(0, remaining),
    }  # fmt: skip
    if node.started_at_ms is not None and node.finished_at_ms is not None:
        data["duration_ms"] = node.finished_at_ms - node.started_at_ms
    if node.error is not None:
        data["error"] = node.error
    return WorkflowEvent("workflow." + kind, workflow.id, data)


def _end_event(workflow: Workflow, now_ms: int) -> WorkflowEvent:
    data: dict[str, Any] = {**_about(workflow), "total_steps": len(workflow.nodes),
                            "duration_ms": now_ms - workflow.created_at_ms}  # fmt: skip
    if workflow.state is WorkflowState.FAILED:
        failed = next((n for n in workflow.nodes if n.state is NodeState.FAILED), None)
        if failed is not None:
            data["failed_step_id"] = failed.name or str(failed.index)
            data["failed_step_type"] = failed.job_type
            data["error"] = failed.error or {}
    return WorkflowEvent("workflow." + workflow.state.value, workflow.id, data)
