"""A workflow as the daemon holds it: one header and one node per job or callback.

Every shape (chain, group, batch, the DAG dialect) is the same graph: a node runs once all
its dependencies are terminal and its condition holds. Nodes are immutable; the pure moves in
`advance.py` return new workflows, so the engine can compute a whole commit before writing it.
Counters are derived from the nodes, never stored apart from them, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, TypeVar

from ojs_amqp.core.job import MISSING, Job, from_record, to_record


class WorkflowKind(StrEnum):
    CHAIN = "chain"
    GROUP = "group"
    BATCH = "batch"
    #: The HTTP binding's §14 dialect (`steps[].id`, `depends_on`), as the Python SDK sends it.
    DAG = "dag"


class WorkflowState(StrEnum):
    """`running` from creation (the suite's choice; the spec's `pending` is never used)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self is not WorkflowState.RUNNING


class NodeState(StrEnum):
    """ojs-workflows §4.4, plus `skipped` for a callback whose condition did not hold."""

    WAITING = "waiting"  # no job yet: a dependency is not terminal
    PENDING = "pending"  # its job exists and has not started
    ACTIVE = "active"  # its job started (it stays active between attempts)
    COMPLETED = "completed"
    FAILED = "failed"  # its job was discarded: retries exhausted, non-retryable, expired
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_NODE


_TERMINAL_NODE = frozenset(
    {NodeState.COMPLETED, NodeState.FAILED, NodeState.CANCELLED, NodeState.SKIPPED}
)


class NodeKind(StrEnum):
    JOB = "job"
    CALLBACK = "callback"


class Trigger(StrEnum):
    """When a callback fires, judged once every dependency is terminal (§6.5)."""

    ON_COMPLETE = "on_complete"
    ON_SUCCESS = "on_success"
    ON_FAILURE = "on_failure"

    def fires(self, any_failed: bool) -> bool:
        if self is Trigger.ON_COMPLETE:
            return True
        return any_failed if self is Trigger.ON_FAILURE else not any_failed


@dataclass(frozen=True, slots=True)
class Node:
    index: int
    kind: NodeKind
    job_id: str  # fixed when the workflow is created
    job_type: str
    deps: tuple[int, ...]  # indices, in the order the definition lists them
    state: NodeState
    #: The job as parsed at creation, kept until the job is created; None once it exists.
    template: Job | None
    #: The DAG dialect's step id, or a callback's trigger name; None for chain/group steps.
    name: str | None = None
    trigger: Trigger | None = None
    result: Any = MISSING
    error: dict[str, Any] | None = None
    attempt: int = 0
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    #: Derived, never stored (`linked` computes them): the nodes that depend on this one, and
    #: how many of this node's dependencies are not terminal yet. They let an advance touch
    #: only the nodes a move can unblock, not the whole graph (a 1,000-job batch).
    dependents: tuple[int, ...] = ()
    open_deps: int = 0

    @property
    def created(self) -> bool:
        """Whether its job exists in the store (and so has an id a client can GET)."""
        return self.template is None


@dataclass(frozen=True, slots=True)
class Workflow:
    id: str
    kind: WorkflowKind
    name: str | None
    state: WorkflowState
    nodes: tuple[Node, ...]
    created_at_ms: int
    #: Nodes not terminal yet (derived like Node.open_deps; the workflow ends at 0).
    open_nodes: int
    #: Bumped by every change: the store's compare-and-set guard for the header row.
    version: int = 1
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    #: Set with `cancelled` (finished_at_ms is set with it).
    cancelled_at_ms: int | None = None

    def node_of(self, job_id: str, hint: Any = None) -> Node | None:
        """The node whose job this is; `hint` is the index the job's envelope carries
        (`workflow_step`), checked before it is trusted."""
        nodes = self.nodes
        if isinstance(hint, int) and 0 <= hint < len(nodes) and nodes[hint].job_id == job_id:
            return nodes[hint]
        for node in nodes:
            if node.job_id == job_id:
                return node
        return None

    @property
    def jobs(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind is NodeKind.JOB)

    @property
    def callbacks(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.kind is NodeKind.CALLBACK)

    def counters(self) -> Counters:
        """What the suite and the spec count. A batch's callbacks are not counted (the suite's
        `jobs_total` excludes them); the DAG dialect's callback steps are steps, and are."""
        counted = self.jobs if self.kind is not WorkflowKind.DAG else self.nodes
        states = [n.state for n in counted]
        return Counters(
            total=len(states),
            completed=states.count(NodeState.COMPLETED),
            failed=states.count(NodeState.FAILED),
            cancelled=states.count(NodeState.CANCELLED),
        )


@dataclass(frozen=True, slots=True)
class WorkflowEvent:
    """An event a move produced (ojs-workflows Appendix B), emitted once the move is recorded."""

    type: str
    workflow_id: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Counters:
    total: int
    completed: int
    failed: int
    cancelled: int


# --- storage form -------------------------------------------------------------------------
# One header row and one row per node (docs/adr/0005-workflows.md): an advance rewrites the
# header and only the nodes it changed, so a 1,000-job batch costs one node row per job.


def header_record(workflow: Workflow) -> dict[str, Any]:
    return {
        "id": workflow.id,
        "kind": workflow.kind.value,
        "name": workflow.name,
        "state": workflow.state.value,
        "version": workflow.version,
        "created_at_ms": workflow.created_at_ms,
        "started_at_ms": workflow.started_at_ms,
        "finished_at_ms": workflow.finished_at_ms,
        "cancelled_at_ms": workflow.cancelled_at_ms,
        "node_count": len(workflow.nodes),
    }


def node_record(node: Node) -> dict[str, Any]:
    record: dict[str, Any] = {
        "index": node.index,
        "kind": node.kind.value,
        "job_id": node.job_id,
        "job_type": node.job_type,
        "deps": list(node.deps),
        "state": node.state.value,
        "template": to_record(node.template) if node.template is not None else None,
        "name": node.name,
        "trigger": node.trigger.value if node.trigger is not None else None,
        "error": node.error,
        "attempt": node.attempt,
        "started_at_ms": node.started_at_ms,
        "finished_at_ms": node.finished_at_ms,
    }
    if node.result is not MISSING:
        record["result"] = node.result
    return record


def from_records(header: dict[str, Any], nodes: list[dict[str, Any]]) -> Workflow:
    """The workflow the rows store; nodes may come in any order."""
    built = sorted((_node_from(r) for r in nodes), key=lambda n: n.index)
    if [n.index for n in built] != list(range(header["node_count"])):
        raise ValueError(f"workflow {header['id']}: node rows do not match node_count")
    linked_nodes = linked(built)
    return Workflow(
        id=header["id"],
        kind=WorkflowKind(header["kind"]),
        name=header["name"],
        state=WorkflowState(header["state"]),
        nodes=linked_nodes,
        created_at_ms=header["created_at_ms"],
        open_nodes=sum(1 for n in linked_nodes if not n.state.terminal),
        version=header["version"],
        started_at_ms=header["started_at_ms"],
        finished_at_ms=header["finished_at_ms"],
        cancelled_at_ms=header["cancelled_at_ms"],
    )


def _node_from(r: dict[str, Any]) -> Node:
    template = r["template"]
    trigger = r["trigger"]
    return Node(
        index=r["index"],
        kind=NodeKind(r["kind"]),
        job_id=r["job_id"],
        job_type=r["job_type"],
        deps=tuple(r["deps"]),
        state=NodeState(r["state"]),
        template=from_record(template) if template is not None else None,
        name=r["name"],
        trigger=Trigger(trigger) if trigger is not None else None,
        result=r.get("result", MISSING),
        error=r["error"],
        attempt=r["attempt"],
        started_at_ms=r["started_at_ms"],
        finished_at_ms=r["finished_at_ms"],
    )


_FIELDS: dict[type, tuple[str, ...]] = {}
_T = TypeVar("_T", Node, Workflow)


def revise(obj: _T, **changes: Any) -> _T:
    """A copy of a node or workflow with `changes`: dataclasses.replace without its per-call
    introspection and __init__ (it was most of an advance's cost), as core.job.evolve."""
    cls = type(obj)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    unknown = changes.keys() - set(names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    new = object.__new__(cls)
    for name in names:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(obj, name))
    return new


def linked(nodes: Iterable[Node]) -> tuple[Node, ...]:
    """The nodes with their derived fields (dependents, open_deps) computed from deps and
    states."""
    listed = list(nodes)
    dependents: list[list[int]] = [[] for _ in listed]
    for node in listed:
        for dep in node.deps:
            dependents[dep].append(node.index)
    return tuple(
        revise(node, dependents=tuple(dependents[node.index]),
                open_deps=sum(1 for d in node.deps if not listed[d].state.terminal))
        for node in listed
    )  # fmt: skip
