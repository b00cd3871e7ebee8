"""The job a node becomes when it is created: its template, placed in time, with its inputs.

A node's job is parsed (and so validated) when the workflow is created, under the id it keeps
for ever; it is only *created* when its dependencies allow it. Relative times (`+PT5M`) count
from that moment, as they would for a push made then; absolute ones stay as written.
"""

from __future__ import annotations

from typing import Any

from ojs_amqp.core.job import MISSING, Job, JobState, evolve
from ojs_amqp.core.workflow.model import (
    Node,
    NodeKind,
    NodeState,
    Workflow,
    WorkflowKind,
    revise,
)

#: Envelope fields the daemon sets on a workflow's jobs; a client's values are dropped.
WORKFLOW_FIELDS = ("workflow_id", "workflow_step", "workflow_step_id", "parent_results")


def spawn(workflow: Workflow, node: Node, now_ms: int) -> tuple[Job, Node]:
    """The node's job, created at `now_ms`, and the node as it is once its job exists."""
    template = node.template
    if template is None:
        raise ValueError(f"node {node.index} of workflow {workflow.id} already has its job")
    scheduled = _shifted(template, "scheduled_at", template.scheduled_at_ms, now_ms)
    expires = _shifted(template, "expires_at", template.expires_at_ms, now_ms)
    if template.state is JobState.PENDING:
        state = JobState.PENDING
    elif scheduled is not None and scheduled > now_ms:
        state = JobState.SCHEDULED
    else:
        state = JobState.AVAILABLE
    extra = {k: v for k, v in template.extra.items() if k not in WORKFLOW_FIELDS}
    extra["workflow_id"] = workflow.id
    extra["workflow_step"] = node.index
    if node.name is not None:
        extra["workflow_step_id"] = node.name
    extra["parent_results"] = parent_results(workflow, node)
    job = evolve(
        template, state=state, created_at_ms=now_ms, scheduled_at_ms=scheduled,
        expires_at_ms=expires, enqueued_at_ms=now_ms if state is JobState.AVAILABLE else None,
        extra=extra,
    )  # fmt: skip
    return job, revise(node, state=NodeState.PENDING, template=None)


def parent_results(workflow: Workflow, node: Node) -> list[Any]:
    """The inputs a node's job gets, as an array (the suite indexes `parent_results[0]`; the
    spec's object keyed "0", "1"... holds the same values at the same positions).

    A chain step gets every earlier step's result, by step index (the spec's SHOULD); a
    callback every job's result, in index order (null for a job that failed); a DAG step its
    dependencies' results in `depends_on` order; group and batch jobs get none."""
    if node.kind is NodeKind.CALLBACK:
        indices: tuple[int, ...] | range = node.deps
    elif workflow.kind is WorkflowKind.CHAIN:
        indices = range(node.index)
    elif workflow.kind is WorkflowKind.DAG:
        indices = node.deps
    else:
        indices = ()
    nodes = workflow.nodes
    return [_result(nodes[i]) for i in indices]


def _result(node: Node) -> Any:
    if node.state is not NodeState.COMPLETED or node.result is MISSING:
        return None
    return node.result


def _shifted(template: Job, name: str, value: int | None, now_ms: int) -> int | None:
    """A relative time moved to count from now; an absolute one (kept verbatim in
    client_times) as it is."""
    if value is None or name in template.client_times:
        return value
    return value - template.created_at_ms + now_ms
