"""Drive the pure workflow core the way the engine will: jobs move through core.lifecycle, and
every terminal move is handed to `advance.job_finished`. No store, no broker."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ojs_amqp.core import lifecycle
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.job import MISSING, Job, JobState
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.core.workflow import advance
from ojs_amqp.core.workflow.advance import Advance
from ojs_amqp.core.workflow.definition import parse_workflow
from ojs_amqp.core.workflow.model import Workflow, WorkflowEvent

T0 = 1_700_000_000_000


def no_jitter() -> float:
    return 0.5


@dataclass
class Run:
    """One workflow and the jobs the core asked to create, as a store would hold them."""

    workflow: Workflow
    jobs: dict[str, Job] = field(default_factory=dict)
    created: Counter[str] = field(default_factory=Counter)
    events: list[WorkflowEvent] = field(default_factory=list)
    now: int = T0

    @classmethod
    def of(cls, body: dict[str, Any]) -> Run:
        ids = UUIDv7Generator()
        made = parse_workflow(body, now_ms=T0, new_id=lambda: ids.new(T0))
        run = cls(made.workflow)
        run._record(made.jobs, made.events)
        return run

    def _record(self, jobs: tuple[Job, ...], events: tuple[WorkflowEvent, ...]) -> None:
        for job in jobs:
            self.created[job.id] += 1
            self.jobs[job.id] = job
        self.events.extend(events)

    def apply(self, step: Advance) -> Advance:
        self.workflow = step.workflow
        self._record(step.create, step.events)
        for job_id in step.cancel:
            self.jobs[job_id] = lifecycle.cancel(self.jobs[job_id], self.now)
        return step

    def tick(self) -> int:
        self.now += 10
        return self.now

    def job_of(self, index: int) -> Job:
        return self.jobs[self.workflow.nodes[index].job_id]

    def start(self, index: int) -> Advance:
        job = lifecycle.fetch(self.job_of(index), self.tick(), "w-1")
        self.jobs[job.id] = job
        return self.apply(advance.job_started(self.workflow, job, self.now))

    def finish(self, index: int, outcome: str, result: Any = MISSING) -> Advance:
        """Take the node's job to `outcome` (completed, failed, cancelled) and advance."""
        job = self.job_of(index)
        now = self.tick()
        if outcome == "cancelled":
            done = lifecycle.cancel(job, now)
        else:
            if job.state is not JobState.ACTIVE:
                job = lifecycle.fetch(job, now, "w-1")
            if outcome == "completed":
                done = lifecycle.ack(job, now, result)
            else:
                report = FailureReport(message="boom", code="handler_error", retryable=False)
                done = lifecycle.fail(job, now, report, no_jitter)
        self.jobs[done.id] = done
        return self.replay(done.id)

    def replay(self, job_id: str) -> Advance:
        """Hand the job's current record to the core again (a redelivered report)."""
        return self.apply(advance.job_finished(self.workflow, self.jobs[job_id], self.now))

    def states(self) -> list[str]:
        return [n.state.value for n in self.workflow.nodes]

    def job_results(self) -> list[Any]:
        return [n.result for n in self.workflow.nodes]

    def event_types(self) -> list[str]:
        return [e.type for e in self.events]


def jobs_body(kind: str, count: int, **extra: Any) -> dict[str, Any]:
    field_name = "steps" if kind == "chain" else "jobs"
    items = [{"type": f"t.j{i}", "args": [i]} for i in range(count)]
    return {"type": kind, "name": f"{kind}-{count}", field_name: items, **extra}


def callbacks(*names: str) -> dict[str, Any]:
    return {"callbacks": {n: {"type": f"cb.{n}", "args": [n]} for n in names}}
