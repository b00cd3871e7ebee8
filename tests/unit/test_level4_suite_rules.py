"""The level-4 and ext-rate-limiting suites, step by step, against the pure rules only.

A small in-memory model plays the daemon (push, batch, fetch, ack, pause, job and stats
reads) and takes every decision the suites check from core: unique policy, fingerprint and
conflict (core/unique.py), priority and hand-out order (core/priority.py), rate limits
(core/rate_policy.py, core/rate_limits.py), batch validation (core/batch.py) and the pause
state and stats bodies (core/queue_ops.py). So each suite expectation these rules decide is
checked here without HTTP or a broker. What stays the model's own is plumbing the wiring
will do: skipping a paused queue at fetch, and counting jobs by state.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from ojs_amqp.core.batch import batch_response, parse_batch
from ojs_amqp.core.envelope import parse_enqueue
from ojs_amqp.core.ids import UUIDv7Generator, is_uuidv7
from ojs_amqp.core.job import Job, JobState, evolve, to_wire
from ojs_amqp.core.priority import order_key, parse_priority
from ojs_amqp.core.queue_ops import QueueState, ThroughputWindow, pause_response, stats_response
from ojs_amqp.core.rate_limits import KeyState, Verdict, decide, headers, inspection, released
from ojs_amqp.core.rate_policy import RatePolicy, parse_rate_limit
from ojs_amqp.core.unique import (
    Holder,
    Ignore,
    Reject,
    Replace,
    job_fingerprint,
    parse_unique_policy,
    rejection,
)
from ojs_amqp.core.unique import (
    decide as decide_unique,
)
from ojs_amqp.errors import OjsError

#: Suite files this test does not replay, with the reason (none today).
NOT_DECIDED_HERE: dict[str, str] = {}


def _suites() -> Path:
    given = os.environ.get("OJS_CONFORMANCE_DIR")
    candidates = [Path(given)] if given else []
    candidates += [p / "shared" / "conformance" for p in Path(__file__).resolve().parents]
    for candidate in candidates:
        if (candidate / "suites" / "level-4-advanced").is_dir():
            return candidate / "suites"
    pytest.fail("conformance suites not found; set OJS_CONFORMANCE_DIR")


def _files() -> list[str]:
    root = _suites()
    found = [*root.glob("level-4-advanced/**/*.json"), *root.glob("ext-rate-limiting/*.json")]
    return sorted(str(p.relative_to(root)) for p in found)


class Model:
    """Just enough of a daemon to replay the suites' steps through the core rules."""

    def __init__(self) -> None:
        self.now = 1_700_000_000_000
        self.ids = UUIDv7Generator()
        self.jobs: dict[str, Job] = {}
        self.order: dict[str, int] = {}
        self.keys: dict[str, str] = {}  # job id -> unique fingerprint
        self.limits: dict[str, RatePolicy] = {}  # rate-limit key -> policy (last wins)
        self.job_limit: dict[str, str] = {}  # job id -> rate-limit key
        self.limit_state: dict[str, KeyState] = {}
        self.last_job_id: str | None = None
        self.queues: dict[str, QueueState] = {}

    def new_id(self) -> str:
        return self.ids.new(self.now)

    def _store(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.order[job.id] = len(self.order)
        self.last_job_id = job.id

    def push(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        body = copy.deepcopy(body)
        options = body.get("options") or {}
        unique_raw, limit_raw = options.pop("unique", None), options.pop("rate_limit", None)
        if "priority" in options:
            options["priority"] = parse_priority(options["priority"], "options.priority")
        job = parse_enqueue(body, now_ms=self.now, new_id=self.new_id())
        out_headers: dict[str, str] = {}
        if limit_raw is not None:
            policy = parse_rate_limit(limit_raw, job.queue)
            self.limits[policy.key] = policy
            self.job_limit[job.id] = policy.key
            state = self.limit_state.get(policy.key, KeyState())
            out_headers = headers(policy, state, self.now).to_http()
        if unique_raw is not None:
            policy_u = parse_unique_policy(unique_raw)
            key = job_fingerprint(policy_u, job)
            holders = [
                Holder(j.id, j.state, j.created_at_ms, j.scheduled_at_ms)
                for j in self.jobs.values()
                if self.keys.get(j.id) == key
            ]
            verdict = decide_unique(policy_u, holders, self.now)
            if isinstance(verdict, Reject):
                return 409, {"error": rejection(verdict, key).to_wire()}, out_headers
            if isinstance(verdict, Ignore):
                existing = to_wire(self.jobs[verdict.holder.job_id])
                return 200, {"job": existing, "deduplicated": True}, out_headers
            if isinstance(verdict, Replace):
                for holder in verdict.holders:
                    old = self.jobs[holder.job_id]
                    self.jobs[old.id] = evolve(old, state=JobState.CANCELLED)
            self.keys[job.id] = key
        self._store(job)
        return 201, {"job": to_wire(job)}, out_headers

    def batch(self, body: Any) -> tuple[int, dict[str, Any]]:
        jobs = parse_batch(body, now_ms=self.now, new_id=self.new_id)
        for job in jobs:
            self._store(job)
        return 201, batch_response(jobs)

    def fetch(self, body: dict[str, Any]) -> dict[str, Any]:
        count = body.get("count", 1)
        if all(self.queue(q).paused for q in body["queues"]):
            return {"jobs": []}
        ready = sorted(
            (j for j in self.jobs.values()
             if j.queue in body["queues"] and j.state is JobState.AVAILABLE
             and not self.queue(j.queue).paused),
            key=lambda j: order_key(j.priority, self.order[j.id]),
        )  # fmt: skip
        handed: list[dict[str, Any]] = []
        for job in ready:
            if len(handed) >= count:
                break
            key = self.job_limit.get(job.id)
            if key is not None:
                decision = decide(self.limits[key], self.limit_state.get(key, KeyState()), self.now)
                if decision.verdict is not Verdict.ADMIT:
                    continue  # skipped, stays available (§8.1)
                self.limit_state[key] = decision.state
            active = evolve(job, state=JobState.ACTIVE, worker_id=body.get("worker_id"))
            self.jobs[job.id] = active
            handed.append(to_wire(active))
        return {"jobs": handed}

    def ack(self, body: dict[str, Any]) -> dict[str, Any]:
        job = self.jobs[body["job_id"]]
        assert job.state is JobState.ACTIVE
        self.jobs[job.id] = evolve(job, state=JobState.COMPLETED)
        key = self.job_limit.get(job.id)
        if key is not None:
            self.limit_state[key] = released(self.limit_state.get(key, KeyState()))
        return {"state": "completed", "job_id": job.id}

    def queue(self, name: str) -> QueueState:
        return self.queues.setdefault(name, QueueState(name))

    def stats(self, queue: str) -> dict[str, Any]:
        counts = {s.value: 0 for s in JobState}
        for job in self.jobs.values():
            if job.queue == queue:
                counts[job.state.value] += 1
        figures = ThroughputWindow(started_ms=self.now).figures(self.now)
        return stats_response(self.queue(queue), counts, figures, self.now)

    def call(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        try:
            if (method, path) == ("POST", "/ojs/v1/jobs"):
                return self.push(body)
            if (method, path) == ("POST", "/ojs/v1/jobs/batch"):
                return (*self.batch(body), {})
            if (method, path) == ("POST", "/ojs/v1/workers/fetch"):
                return 200, self.fetch(body), {}
            if (method, path) == ("POST", "/ojs/v1/workers/ack"):
                return 200, self.ack(body), {}
        except OjsError as exc:
            return exc.http_status, {"error": exc.to_wire()}, {}
        if method == "POST" and (m := re.fullmatch(r"/ojs/v1/queues/([^/]+)/(pause|resume)", path)):
            name, verb = m.groups()
            state = self.queue(name)
            self.queues[name] = state.pause(self.now) if verb == "pause" else state.resume()
            return 200, pause_response(self.queues[name]), {}
        if method == "GET" and (m := re.fullmatch(r"/ojs/v1/queues/([^/]+)/stats", path)):
            return 200, self.stats(m.group(1)), {}
        if method == "GET" and (m := re.fullmatch(r"/ojs/v1/(?:admin/)?jobs/([^/]+)", path)):
            wire = to_wire(self.jobs[m.group(1)])
            return 200, (wire if "/admin/" in path else {"job": wire}), {}
        if method == "GET" and (m := re.fullmatch(r"/ojs/v1/rate-limits/([^/]+)", path)):
            key = m.group(1)
            return (
                200,
                inspection(self.limits[key], self.limit_state.get(key, KeyState()), self.now),
                {},
            )
        raise AssertionError(f"the model does not serve {method} {path}")


def _lookup(value: Any, path: str) -> Any:
    for name, index in re.findall(r"\.?([^.\[\]]+)|\[(\d+)\]", path.removeprefix("$")):
        if index:
            if not isinstance(value, list) or int(index) >= len(value):
                return _ABSENT
            value = value[int(index)]
        else:
            if not isinstance(value, dict) or name not in value:
                return _ABSENT
            value = value[name]
    return value


_ABSENT = object()


def _resolve(text: Any, responses: dict[str, Any], model: Model) -> Any:
    if isinstance(text, dict):
        return {k: _resolve(v, responses, model) for k, v in text.items()}
    if isinstance(text, list):
        return [_resolve(v, responses, model) for v in text]
    if not isinstance(text, str):
        return text

    def one(match: re.Match[str]) -> str:
        ref = match.group(1).strip()
        if ref == "job_id":
            return str(model.last_job_id)
        step, _, rest = ref.removeprefix("steps.").partition(".response.body")
        return str(_lookup(responses[step], rest))

    return re.sub(r"\{\{([^}]*)\}\}", one, text)


def _check(expected: Any, actual: Any, where: str) -> None:
    if isinstance(expected, dict) and "$exists" in expected:
        assert (actual is not _ABSENT) == expected["$exists"], where
    elif isinstance(expected, dict) and "$in" in expected:
        assert actual in expected["$in"], where
    elif expected == "string:uuidv7":
        assert isinstance(actual, str) and is_uuidv7(actual), where
    elif expected == "string:non_empty":
        assert isinstance(actual, str) and actual, where
    elif isinstance(expected, str) and expected.startswith("array:length:"):
        assert isinstance(actual, list) and len(actual) == int(expected.split(":")[2]), where
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def _check_status(assertions: dict[str, Any], status: int, where: str) -> None:
    expected = assertions.get("status")
    if isinstance(expected, str) and expected.startswith("one_of:"):
        assert status in {int(s) for s in expected[len("one_of:") :].split(",")}, where
    elif expected is not None:
        assert status == expected, where
    if "status_in" in assertions:
        assert status in assertions["status_in"], where


@pytest.mark.parametrize("name", [f for f in _files() if f not in NOT_DECIDED_HERE])
def test_suite_expectations_hold_under_the_core_rules(name: str) -> None:
    test = json.loads((_suites() / name).read_text())
    model, responses = Model(), {}
    for step in test["steps"]:
        model.now += step.get("delay_ms", 0)
        path = _resolve(step["path"], responses, model)
        body = _resolve(step.get("body"), responses, model)
        status, answer, out_headers = model.call(step["action"].upper(), path, body)
        responses[step["id"]] = answer
        where = f"{name} {step['id']}"
        assertions = step.get("assertions", {})
        _check_status(assertions, status, where)
        for path_expr, expected in assertions.get("body", {}).items():
            actual = _lookup(answer, path_expr)
            _check(_resolve(expected, responses, model), actual, f"{where} {path_expr}")
        for header, expected in assertions.get("headers", {}).items():
            _check(expected, out_headers.get(header, _ABSENT), f"{where} header {header}")
        if "concurrency limit of 1" in step.get("body_comment", ""):
            assert len(answer["jobs"]) <= 1, where
        model.now += 5  # each step takes a few milliseconds


def test_every_suite_file_is_run_or_listed() -> None:
    files = set(_files())
    assert set(NOT_DECIDED_HERE) <= files
    assert len([f for f in files if f.startswith("level-4-advanced/")]) == 16
    assert len([f for f in files if f.startswith("ext-rate-limiting/")]) == 5
