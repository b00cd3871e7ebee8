"""A workflow on the wire: what POST, GET and DELETE /ojs/v1/workflows answer inside
`{"workflow": ...}`.

Where the suite and the spec disagree the suite's shape comes first and the spec's is sent
too: counters as `steps_total`/`steps_completed` (chain, DAG) or `jobs_total`/`jobs_completed`
(group, batch) and as `metadata.job_count/completed_count/failed_count`; `state` is `running`
from creation. A node's `job_id` is null until its job exists (§11.1), though it is fixed.
"""

from __future__ import annotations

from typing import Any

from ojs_amqp.core.job import MISSING
from ojs_amqp.core.times import format_ms
from ojs_amqp.core.workflow.model import (
    Node,
    NodeKind,
    NodeState,
    Workflow,
    WorkflowKind,
    WorkflowState,
)

_STEPS = (WorkflowKind.CHAIN, WorkflowKind.DAG)


def to_wire(workflow: Workflow) -> dict[str, Any]:
    counters = workflow.counters()
    prefix = "steps" if workflow.kind in _STEPS else "jobs"
    out: dict[str, Any] = {
        "id": workflow.id,
        "type": workflow.kind.value,
        "name": workflow.name,
        "state": workflow.state.value,
        f"{prefix}_total": counters.total,
        f"{prefix}_completed": counters.completed,
        f"{prefix}_failed": counters.failed,
    }
    names = [n.name or str(n.index) for n in workflow.nodes]
    listed = workflow.nodes if workflow.kind is WorkflowKind.DAG else workflow.jobs
    out[prefix] = [_node(n, names, workflow.kind) for n in listed]
    if workflow.kind is WorkflowKind.BATCH:
        out["callbacks"] = {n.name: _node(n, names, workflow.kind) for n in workflow.callbacks}
    _times(out, workflow)
    out["metadata"] = _metadata(workflow)
    _failures(out, workflow)
    if workflow.state is WorkflowState.CANCELLED:
        out["steps_cancelled"] = sum(1 for n in workflow.nodes if n.state is NodeState.CANCELLED)
        out["steps_already_completed"] = sum(
            1 for n in workflow.nodes if n.state is NodeState.COMPLETED
        )
    return out


def _node(node: Node, names: list[str], kind: WorkflowKind) -> dict[str, Any]:
    out: dict[str, Any] = {"index": node.index}
    if kind is WorkflowKind.DAG:
        out["id"] = node.name
    out["type"] = node.job_type
    out["state"] = node.state.value
    out["job_id"] = node.job_id if node.created else None
    if kind is WorkflowKind.DAG:
        out["depends_on"] = [names[d] for d in node.deps]
    if node.kind is NodeKind.CALLBACK:
        out["callback_type"] = node.trigger.value if node.trigger is not None else None
    if node.result is not MISSING:
        out["result"] = node.result
    if node.error is not None:
        out["error"] = node.error
    if node.started_at_ms is not None:
        out["started_at"] = format_ms(node.started_at_ms)
    if node.finished_at_ms is not None:
        out["completed_at"] = format_ms(node.finished_at_ms)
    return out


def _times(out: dict[str, Any], workflow: Workflow) -> None:
    out["created_at"] = format_ms(workflow.created_at_ms)
    if workflow.started_at_ms is not None:
        out["started_at"] = format_ms(workflow.started_at_ms)
    if workflow.finished_at_ms is not None:
        out["completed_at"] = format_ms(workflow.finished_at_ms)
    if workflow.cancelled_at_ms is not None:
        out["cancelled_at"] = format_ms(workflow.cancelled_at_ms)


def _metadata(workflow: Workflow) -> dict[str, Any]:
    counters = workflow.counters()
    meta: dict[str, Any] = {"created_at": format_ms(workflow.created_at_ms)}
    for name, at in (("started_at", workflow.started_at_ms),
                     ("completed_at", workflow.finished_at_ms),
                     ("cancelled_at", workflow.cancelled_at_ms)):  # fmt: skip
        if at is not None:
            meta[name] = format_ms(at)
    meta["job_count"] = counters.total
    meta["completed_count"] = counters.completed
    meta["failed_count"] = counters.failed
    meta["cancelled_count"] = counters.cancelled
    return meta


def _failures(out: dict[str, Any], workflow: Workflow) -> None:
    """§9.6: the failed jobs' ids and errors; a chain also names its failed step."""
    failed = [n for n in workflow.nodes if n.state is NodeState.FAILED]
    out["failed_job_ids"] = [n.job_id for n in failed]
    out["errors"] = [_error(n) for n in failed]
    if workflow.kind is WorkflowKind.CHAIN and failed:
        out["failed_step_index"] = failed[0].index


def _error(node: Node) -> dict[str, Any]:
    error = node.error or {}
    entry: dict[str, Any] = {
        "job_id": node.job_id,
        "code": error.get("code", "unknown"),
        "message": error.get("message", ""),
        "attempt": node.attempt,
        "step_index": node.index,
    }
    if node.kind is NodeKind.CALLBACK and node.trigger is not None:
        entry["callback"] = node.trigger.value
    return entry
