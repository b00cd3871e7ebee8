"""The HTTP binding's graph dialect: `steps[]` with `id` and `depends_on`, and cycle detection.

A step runs once every step it depends on has completed; if one of them failed, was
cancelled or skipped, the step is cancelled instead. A step whose `options.callback_type` is
on_complete, on_success or on_failure (the Python SDK's batch) is a callback: it runs once
its dependencies are terminal and its condition holds, and is skipped otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ojs_amqp.core.envelope import MAX_NAME_BYTES
from ojs_amqp.core.job import Job
from ojs_amqp.core.workflow.model import Node, NodeKind, NodeState, Trigger
from ojs_amqp.errors import InvalidWorkflow

_TRIGGERS = tuple(t.value for t in Trigger)


def dag_nodes(items: list[Any], parse: Callable[[Any, str], Job]) -> list[Node]:
    """The nodes of a validated, non-empty `steps` array (cycles are checked apart)."""
    names = [_step_name(raw, f"steps[{i}]") for i, raw in enumerate(items)]
    where = _unique(names)
    nodes = []
    for i, raw in enumerate(items):
        path = f"steps[{i}]"
        deps = _deps(raw.get("depends_on"), path, where, i)
        body = {k: v for k, v in raw.items() if k not in ("id", "depends_on")}
        trigger = _callback_type(body, path)
        if trigger is not None and not deps:
            raise InvalidWorkflow(
                f"{path}.options.callback_type: a callback must depend on at least one step",
                details={"path": f"{path}.depends_on"},
            )  # fmt: skip
        job = parse(body, path)
        nodes.append(Node(
            index=i, kind=NodeKind.CALLBACK if trigger else NodeKind.JOB, job_id=job.id,
            job_type=job.type, deps=deps, state=NodeState.WAITING, template=job, name=names[i],
            trigger=trigger,
        ))  # fmt: skip
    return nodes


def _step_name(raw: Any, path: str) -> str:
    if not isinstance(raw, dict):
        raise InvalidWorkflow(f"{path} must be a step object with id, type, args and depends_on",
                              details={"path": path})  # fmt: skip
    name = raw.get("id")
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidWorkflow(
            f"{path}.id: each step needs an id, a non-empty string of at most {MAX_NAME_BYTES} "
            "bytes, that depends_on can name", details={"path": f"{path}.id"},
        )  # fmt: skip
    return name


def _unique(names: list[str]) -> dict[str, int]:
    where: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in where:
            raise InvalidWorkflow(f"steps[{i}].id: {name!r} is also the id of steps[{where[name]}]",
                                  details={"path": f"steps[{i}].id"})  # fmt: skip
        where[name] = i
    return where


def _deps(raw: Any, path: str, where: dict[str, int], own: int) -> tuple[int, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(d, str) for d in raw):
        raise InvalidWorkflow(f"{path}.depends_on must be an array of step ids",
                              details={"path": f"{path}.depends_on"})  # fmt: skip
    deps: list[int] = []
    for j, name in enumerate(raw):
        at = f"{path}.depends_on[{j}]"
        index = where.get(name)
        if index is None:
            raise InvalidWorkflow(f"{at}: no step has the id {name!r}", details={"path": at})
        if index == own:
            raise InvalidWorkflow(f"{at}: a step cannot depend on itself", details={"path": at})
        if index in deps:
            raise InvalidWorkflow(f"{at}: {name!r} is listed twice", details={"path": at})
        deps.append(index)
    return tuple(deps)


def _callback_type(body: dict[str, Any], path: str) -> Trigger | None:
    """Take `options.callback_type` out of the step (it is not a job option)."""
    options = body.get("options")
    if not isinstance(options, dict) or "callback_type" not in options:
        return None
    options = dict(options)
    value = options.pop("callback_type")
    body["options"] = options
    if value not in _TRIGGERS:
        raise InvalidWorkflow(f"{path}.options.callback_type must be one of "
                              f"{', '.join(_TRIGGERS)}, not {value!r}",
                              details={"path": f"{path}.options.callback_type"})  # fmt: skip
    return Trigger(value)


def check_acyclic(nodes: list[Node], names: list[str]) -> None:
    """Kahn's algorithm; a cycle is refused naming its steps in order."""
    waiting = {n.index: len(n.deps) for n in nodes}
    dependents: dict[int, list[int]] = {n.index: [] for n in nodes}
    for node in nodes:
        for dep in node.deps:
            dependents[dep].append(node.index)
    ready = [i for i, count in waiting.items() if count == 0]
    while ready:
        for after in dependents[ready.pop()]:
            waiting[after] -= 1
            if waiting[after] == 0:
                ready.append(after)
    stuck = {i for i, count in waiting.items() if count > 0}
    if stuck:
        cycle = _a_cycle(nodes, stuck)
        text = " -> ".join(names[i] for i in cycle)
        raise InvalidWorkflow(f"steps depend on each other in a cycle: {text} (each depends "
                              "on the next)",
                              details={"path": f"steps[{cycle[0]}].depends_on",
                                       "cycle": [names[i] for i in cycle]})  # fmt: skip


def _a_cycle(nodes: list[Node], stuck: set[int]) -> list[int]:
    """Walk dependencies inside the stuck set until a step repeats: that loop is a cycle."""
    path: list[int] = []
    at = min(stuck)
    while at not in path:
        path.append(at)
        at = next(d for d in nodes[at].deps if d in stuck)
    return [*path[path.index(at) :], at]
