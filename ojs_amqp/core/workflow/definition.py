"""Parse and validate a `POST /ojs/v1/workflows` body into a Workflow and its first jobs.

Two dialects: the spec's primitives (`type` chain/group/batch with `steps`, `jobs` and
`callbacks`) and the HTTP binding's §14 graph (`steps[]` with `id` and `depends_on`, no `type`),
which the official Python SDK sends, with its callbacks marked `options.callback_type`. Each
job is parsed exactly as a push is (`core/envelope.py`), under an id fixed now. Nesting is not
supported: a step that is itself a workflow is refused (MAX_NESTING_DEPTH, documented).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ojs_amqp.core.envelope import MAX_NAME_BYTES, parse_enqueue
from ojs_amqp.core.ids import is_uuidv7
from ojs_amqp.core.job import Job
from ojs_amqp.core.workflow.dag import check_acyclic, dag_nodes
from ojs_amqp.core.workflow.model import (
    Node,
    NodeKind,
    NodeState,
    Trigger,
    Workflow,
    WorkflowEvent,
    WorkflowKind,
    WorkflowState,
    linked,
    revise,
)
from ojs_amqp.core.workflow.spawn import WORKFLOW_FIELDS, spawn
from ojs_amqp.errors import InvalidRequest, InvalidWorkflow, Unsupported, ValidationFailed

#: Levels of workflows: 1 means a step is always a job, never a workflow (ojs-workflows §10.2
#: asks the maximum to be documented and deeper definitions refused at creation).
MAX_NESTING_DEPTH = 1
#: Jobs and callbacks in one workflow.
MAX_NODES = 10_000
_PRIMITIVES = frozenset({"chain", "group", "batch"})
#: Top-level fields the daemon owns (ignored, as a push ignores `state`).
_SYSTEM = frozenset({"state", "metadata", "created_at", "started_at", "completed_at"})
_TOP_LEVEL = frozenset({"type", "id", "name", "steps", "jobs", "callbacks", "options"}) | _SYSTEM
_CALLBACK_ORDER = tuple(t.value for t in Trigger)

NewId = Callable[[], str]


@dataclass(frozen=True, slots=True)
class Created:
    workflow: Workflow
    #: The jobs to create in the same commit as the workflow, in index order (publish them in
    #: this order on one channel: a group's jobs are fetched in array order).
    jobs: tuple[Job, ...]
    events: tuple[WorkflowEvent, ...]


def parse_workflow(body: Any, *, now_ms: int, new_id: NewId) -> Created:
    if not isinstance(body, dict):
        raise InvalidWorkflow("the workflow must be a JSON object", details={"path": "$"})
    unknown = sorted(k for k in body if k not in _TOP_LEVEL)
    if unknown:
        raise InvalidWorkflow(
            f"unknown workflow field(s): {', '.join(unknown)}", details={"path": unknown[0]}
        )
    kind = _kind(body)
    workflow_id = _workflow_id(body, new_id)
    name = _name(body)
    defaults = body.get("options")
    if defaults is not None and not isinstance(defaults, dict):
        raise InvalidWorkflow("options must be an object of default job options",
                              details={"path": "options"})  # fmt: skip
    if kind is WorkflowKind.DAG:
        steps = job_list(body.get("steps"), "steps")
        nodes = dag_nodes(steps, lambda raw, path: _job(raw, path, defaults, now_ms, new_id))
        check_acyclic(nodes, [n.name or "" for n in nodes])
    else:
        nodes = _primitive_nodes(kind, body, lambda raw, path: _job(raw, path, defaults, now_ms,
                                                                     new_id))  # fmt: skip
    _check_ids(nodes)
    workflow = Workflow(id=workflow_id, kind=kind, name=name, state=WorkflowState.RUNNING,
                        nodes=linked(nodes), created_at_ms=now_ms,
                        open_nodes=len(nodes))  # fmt: skip
    return _start(workflow, now_ms)


def _start(workflow: Workflow, now_ms: int) -> Created:
    """Create every node without dependencies (a chain's first step, all of a group's)."""
    nodes = list(workflow.nodes)
    jobs: list[Job] = []
    for node in workflow.nodes:
        if not node.deps:
            job, nodes[node.index] = spawn(workflow, node, now_ms)
            jobs.append(job)
    started = revise(workflow, nodes=tuple(nodes))
    event = WorkflowEvent("workflow.created", workflow.id, {
        "workflow_id": workflow.id, "workflow_name": workflow.name,
        "workflow_type": workflow.kind.value, "total_jobs": len(nodes),
    })  # fmt: skip
    return Created(started, tuple(jobs), (event,))


def _kind(body: dict[str, Any]) -> WorkflowKind:
    kind = body.get("type")
    if kind is None or kind == WorkflowKind.DAG.value:
        if "steps" not in body:
            raise InvalidWorkflow(
                "type is required: chain (with steps), group or batch (with jobs), or omit it "
                "and send steps with id and depends_on", details={"path": "type"},
            )  # fmt: skip
        _refuse(body, ("jobs", "callbacks"), "the steps/depends_on dialect")
        return WorkflowKind.DAG
    if not isinstance(kind, str) or kind not in _PRIMITIVES:
        raise InvalidWorkflow(f"type must be chain, group or batch, not {kind!r}",
                              details={"path": "type"})  # fmt: skip
    if kind == "chain":
        _refuse(body, ("jobs", "callbacks"), "a chain (it lists steps)")
    elif kind == "group":
        _refuse(body, ("steps", "callbacks"), "a group (it lists jobs; callbacks need a batch)")
    else:
        _refuse(body, ("steps",), "a batch (it lists jobs)")
    return WorkflowKind(kind)


def _refuse(body: dict[str, Any], fields: tuple[str, ...], what: str) -> None:
    for field in fields:
        if field in body:
            raise InvalidWorkflow(f"{field} is not part of {what}", details={"path": field})


def _workflow_id(body: dict[str, Any], new_id: NewId) -> str:
    given = body.get("id")
    if given is None:
        return new_id()
    if not isinstance(given, str) or not is_uuidv7(given):
        raise InvalidWorkflow(f"id {given!r} is not a lower-case UUIDv7", details={"path": "id"})
    return given


def _name(body: dict[str, Any]) -> str | None:
    name = body.get("name")
    if name is None:
        return None
    if not isinstance(name, str) or len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidWorkflow(f"name must be a string of at most {MAX_NAME_BYTES} bytes",
                              details={"path": "name"})  # fmt: skip
    return name


JobParser = Callable[[Any, str], Job]


def _primitive_nodes(kind: WorkflowKind, body: dict[str, Any], parse: JobParser) -> list[Node]:
    field = "steps" if kind is WorkflowKind.CHAIN else "jobs"
    items = job_list(body.get(field), field)
    nodes = []
    for i, raw in enumerate(items):
        job = parse(raw, f"{field}[{i}]")
        deps = (i - 1,) if kind is WorkflowKind.CHAIN and i > 0 else ()
        nodes.append(_node(i, NodeKind.JOB, job, deps))
    if kind is WorkflowKind.BATCH:
        nodes.extend(_callbacks(body.get("callbacks"), len(nodes), parse))
    return nodes


def job_list(items: Any, field: str) -> list[Any]:
    if not isinstance(items, list) or not items:
        raise InvalidWorkflow(f"{field} must be a non-empty array of jobs",
                              details={"path": field})  # fmt: skip
    if len(items) > MAX_NODES:
        raise InvalidWorkflow(f"{field} holds {len(items)} jobs; a workflow holds at most "
                              f"{MAX_NODES}", details={"path": field})  # fmt: skip
    return items


def _callbacks(callbacks: Any, job_count: int, parse: JobParser) -> list[Node]:
    if not isinstance(callbacks, dict) or not callbacks:
        raise InvalidWorkflow(
            "a batch needs callbacks: an object with on_complete, on_success and/or on_failure "
            "(a batch without callbacks is a group)", details={"path": "callbacks"},
        )  # fmt: skip
    unknown = sorted(k for k in callbacks if k not in _CALLBACK_ORDER)
    if unknown:
        raise InvalidWorkflow(
            f"unknown callback(s) {', '.join(unknown)}: use on_complete, on_success, on_failure",
            details={"path": f"callbacks.{unknown[0]}"},
        )  # fmt: skip
    deps = tuple(range(job_count))
    nodes: list[Node] = []
    for name, raw in callbacks.items():
        if raw is None:
            continue
        job = parse(raw, f"callbacks.{name}")
        index = job_count + len(nodes)
        nodes.append(_node(index, NodeKind.CALLBACK, job, deps, name=name, trigger=Trigger(name)))
    if not nodes:
        raise InvalidWorkflow("a batch needs at least one callback", details={"path": "callbacks"})
    return nodes


def _node(
    index: int, kind: NodeKind, job: Job, deps: tuple[int, ...], *, name: str | None = None,
    trigger: Trigger | None = None,
) -> Node:  # fmt: skip
    return Node(index=index, kind=kind, job_id=job.id, job_type=job.type, deps=deps,
                state=NodeState.WAITING, template=job, name=name, trigger=trigger)  # fmt: skip


def _check_ids(nodes: list[Node]) -> None:
    seen: dict[str, int] = {}
    for node in nodes:
        if node.job_id in seen:
            raise InvalidWorkflow(
                f"jobs {seen[node.job_id]} and {node.index} have the same id {node.job_id}",
                details={"path": f"[{node.index}].id"},
            )  # fmt: skip
        seen[node.job_id] = node.index


def _job(raw: Any, path: str, defaults: dict[str, Any] | None, now_ms: int, new_id: NewId) -> Job:
    """One job, parsed as a push is; its errors name where it sits in the workflow."""
    if not isinstance(raw, dict):
        raise InvalidWorkflow(f"{path} must be a job object with type and args",
                              details={"path": path})  # fmt: skip
    _refuse_nesting(raw, path)
    body = {k: v for k, v in raw.items() if k not in WORKFLOW_FIELDS}
    if defaults:
        options = body.get("options")
        if options is None or isinstance(options, dict):
            merged = {k: v for k, v in defaults.items() if k not in body}
            body["options"] = {**merged, **(options or {})}
    try:
        return parse_enqueue(body, now_ms=now_ms, new_id=new_id())
    except Unsupported as exc:
        raise Unsupported(f"{path}: {exc.message}", details={**exc.details, "path": path}) from None
    except (InvalidRequest, ValidationFailed) as exc:
        raise _located(exc, path) from None


def _located(exc: InvalidRequest | ValidationFailed, path: str) -> InvalidWorkflow:
    errors = exc.details.get("errors")
    if isinstance(errors, list) and errors:
        located = [f"{path}.{e['field']}" if e["field"] else path for e in errors]
        message = "; ".join(f"{p}: {e['message']}" for p, e in zip(located, errors, strict=True))
        where = located[0]
    else:
        field = exc.details.get("field")
        where = f"{path}.{field}" if isinstance(field, str) else path
        message = f"{where}: {exc.message}"
    return InvalidWorkflow(message, details={"path": where, "cause": exc.code})


def _refuse_nesting(raw: dict[str, Any], path: str) -> None:
    kind = raw.get("type")
    nested = (isinstance(kind, str) and kind in _PRIMITIVES) or any(
        k in raw for k in ("steps", "jobs", "callbacks")
    )
    if nested:
        raise InvalidWorkflow(
            f"{path} is a workflow inside a workflow: nesting is not supported (maximum depth "
            f"{MAX_NESTING_DEPTH}); express it with the steps/depends_on dialect instead",
            details={"path": path, "max_nesting_depth": MAX_NESTING_DEPTH},
        )  # fmt: skip
