"""The 14 level-3 suite tests walked through parse -> advance -> GET shape, without HTTP.

Each suite step is played against the pure core with FIFO queues as a broker would hand jobs
out: create parses the body, fetch starts the oldest available job of the queue, ack and nack
move it with core.lifecycle and hand the outcome to the advance rule, DELETE cancels, GET
shapes the workflow. Every assertion the suite makes on a body is checked here the way the
runner checks it (JSONPath into the body, `string:uuidv7`, templates of earlier responses);
statuses are the ones the HTTP edge will send for each intent. `delay_ms` is not needed: the
core advances in the same call. What this cannot check is the wiring (HTTP, store, broker).
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from ojs_amqp.core import lifecycle
from ojs_amqp.core.ids import UUIDv7Generator, is_uuidv7
from ojs_amqp.core.job import MISSING, Job, JobState, to_wire
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.core.workflow import advance, wire
from ojs_amqp.core.workflow.advance import Advance
from ojs_amqp.core.workflow.definition import parse_workflow
from ojs_amqp.core.workflow.model import Workflow

SUITE = (
    Path(
        os.environ.get("OJS_CONFORMANCE_DIR", Path(__file__).parents[3] / "shared" / "conformance")
    )
    / "suites"
    / "level-3-workflows"
)
T0 = 1_700_000_000_000


def suite_files() -> list[Path]:
    """The suite's files; when absent, one missing path whose test fails saying so (the walk
    must not pass by finding nothing)."""
    return sorted(SUITE.glob("*/*.json")) or [SUITE / "missing.json"]


class Core:
    """The pure core plus what the store and the broker would hold: jobs, FIFO queues."""

    def __init__(self) -> None:
        self.ids = UUIDv7Generator()
        self.now = T0
        self.workflows: dict[str, Workflow] = {}
        self.jobs: dict[str, Job] = {}
        self.queues: dict[str, deque[str]] = {}

    def tick(self) -> int:
        self.now += 7
        return self.now

    def _enqueue(self, jobs: tuple[Job, ...]) -> None:
        for job in jobs:
            self.jobs[job.id] = job
            self.queues.setdefault(job.queue, deque()).append(job.id)

    def _apply(self, step: Advance) -> None:
        self.workflows[step.workflow.id] = step.workflow
        self._enqueue(step.create)
        for job_id in step.cancel:
            self.jobs[job_id] = lifecycle.cancel(self.jobs[job_id], self.now)

    def _workflow_of(self, job: Job) -> Workflow:
        return self.workflows[job.extra["workflow_id"]]

    def create(self, body: Any) -> tuple[int, Any]:
        made = parse_workflow(body, now_ms=self.tick(), new_id=lambda: self.ids.new(self.now))
        self.workflows[made.workflow.id] = made.workflow
        self._enqueue(made.jobs)
        return 201, {"workflow": wire.to_wire(made.workflow)}

    def fetch(self, body: dict[str, Any]) -> tuple[int, Any]:
        queue = self.queues.get(body["queues"][0], deque())
        while queue:
            job = self.jobs[queue.popleft()]
            if job.state is not JobState.AVAILABLE:
                continue  # a cancelled copy: stale, dropped
            active = lifecycle.fetch(job, self.tick(), body["worker_id"])
            self.jobs[active.id] = active
            self._apply(advance.job_started(self._workflow_of(active), active, self.now))
            return 200, {"jobs": [to_wire(active)]}
        return 200, {"jobs": []}

    def _finish(self, done: Job) -> tuple[int, Any]:
        self.jobs[done.id] = done
        self._apply(advance.job_finished(self._workflow_of(done), done, self.now))
        return 200, {"job_id": done.id, "state": done.state.value, "job": to_wire(done)}

    def ack(self, body: dict[str, Any]) -> tuple[int, Any]:
        job = self.jobs[body["job_id"]]
        return self._finish(lifecycle.ack(job, self.tick(), body.get("result", MISSING)))

    def nack(self, body: dict[str, Any]) -> tuple[int, Any]:
        error = body["error"]
        report = FailureReport(code=error["code"], message=error["message"],
                               retryable=error.get("retryable"))  # fmt: skip
        failed = lifecycle.fail(self.jobs[body["job_id"]], self.tick(), report, lambda: 0.5)
        return self._finish(failed)

    def cancel(self, workflow_id: str) -> tuple[int, Any]:
        live = {job_id: job.state for job_id, job in self.jobs.items()}
        step = advance.cancel(self.workflows[workflow_id], self.tick(), live)
        self._apply(step)
        return 200, {"workflow": wire.to_wire(step.workflow)}

    def get(self, workflow_id: str) -> tuple[int, Any]:
        return 200, {"workflow": wire.to_wire(self.workflows[workflow_id])}


TEMPLATE = re.compile(r"\{\{steps\.([\w-]+)\.response\.body\.([^}]+)\}\}")
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def lookup(body: Any, path: str) -> Any:
    """The value at a `$.a.b[0].c` path, or MISSING."""
    value = body
    for name, index in _TOKEN.findall(path.removeprefix("$")):
        if name:
            if not isinstance(value, dict) or name not in value:
                return MISSING
            value = value[name]
        else:
            if not isinstance(value, list) or int(index) >= len(value):
                return MISSING
            value = value[int(index)]
    return value


def fill(value: Any, responses: dict[str, Any]) -> Any:
    if isinstance(value, str):
        whole = TEMPLATE.fullmatch(value)
        if whole:
            return lookup(responses[whole[1]], "$." + whole[2])
        return TEMPLATE.sub(lambda m: str(lookup(responses[m[1]], "$." + m[2])), value)
    if isinstance(value, dict):
        return {k: fill(v, responses) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, responses) for v in value]
    return value


def matches(expected: Any, actual: Any) -> bool:
    if expected == "string:uuidv7":
        return isinstance(actual, str) and is_uuidv7(actual)
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    return bool(expected == actual)


def play(core: Core, step: dict[str, Any], body: Any) -> tuple[int, Any]:
    intent, path = step["intent"], step["path"]
    if intent == "create-workflow":
        return core.create(body)
    if intent in ("fetch", "ack", "nack"):
        handler: Any = getattr(core, intent)
        result: tuple[int, Any] = handler(body)
        return result
    workflow_id = path.rsplit("/", 1)[1]
    return core.cancel(workflow_id) if intent == "cancel-workflow" else core.get(workflow_id)


@pytest.mark.parametrize("path", suite_files(), ids=lambda p: p.stem)
def test_suite_steps_hold_against_the_core(path: Path) -> None:
    if not path.exists():
        pytest.fail(f"level-3 suite not found under {SUITE}; set OJS_CONFORMANCE_DIR")
    test = json.loads(path.read_text())
    core = Core()
    responses: dict[str, Any] = {}
    checked = 0
    for step in test["steps"]:
        filled = fill({"path": step["path"], "body": step.get("body")}, responses)
        status, body = play(core, {**step, "path": filled["path"]}, filled["body"])
        responses[step["id"]] = body
        where = f"{test['test_id']} {step['id']}"
        assertions = step["assertions"]
        assert status == assertions["status"], where
        for json_path, raw in assertions.get("body", {}).items():
            expected, actual = fill(raw, responses), lookup(body, json_path)
            assert matches(expected, actual), f"{where}: {json_path} = {actual!r}, not {expected!r}"
            checked += 1
    assert checked > 0


def test_all_fourteen_suite_tests_are_walked() -> None:
    ids = {json.loads(p.read_text())["test_id"] for p in suite_files()}
    assert len(ids) == 14 and {i[:6] for i in ids} == {"L3-CHN", "L3-GRP", "L3-BAT"}
