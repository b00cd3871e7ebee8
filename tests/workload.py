"""A mixed OJS workload driven over HTTP by real client threads, and its ledger.

A producer thread pushes jobs with client-chosen UUIDv7 ids while HTTP worker threads fetch,
ack and nack them, all riding out outages the way real clients do: retry the same id on
connection errors and 5xx, take 409 `duplicate` on a push as "accepted earlier", take 409 on
an ack as "the lease was lost" (the job will come back). Each job's kind fixes what its worker
does and the one terminal state it must end in; `Workload.ledger` checks that and counts
duplicate executions. Used by the SIGKILL acceptance test and the fault-injection suite.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ojs_amqp.core.ids import UUIDv7Generator
from tests.daemon import request

TERMINAL = frozenset({"completed", "discarded", "cancelled"})
#: What a client sees when the daemon is unreachable. Not ValueError: a garbled 2xx body from
#: a live daemon is a bug, recorded as unexpected, not an outage.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


@dataclass(frozen=True)
class Kind:
    """What a job of this kind asks of its worker, and how it must end."""

    name: str
    final_state: str
    runs: int  # executions when nothing goes wrong; more are duplicates
    #: error codes its history must hold, whatever else happened
    errors: tuple[str, ...] = ()


KINDS = {
    k.name: k
    for k in (
        Kind("ack", "completed", 1),  # immediate, succeeds
        Kind("fail", "discarded", 1, ("boom",)),  # fails for good (max_attempts 1)
        Kind("retry", "completed", 2, ("boom",)),  # first attempt fails, the second succeeds
        Kind("scheduled", "completed", 1),  # due a few seconds after the push
        Kind("cancel", "cancelled", 0),  # scheduled far ahead, cancelled by the producer
        # the first worker "crashes" holding it; its lease runs out
        Kind("abandon", "completed", 2, ("visibility_timeout",)),
    )
}
#: The fault suite's mix, in parts per 20.
MIX = {"ack": 9, "fail": 2, "retry": 3, "scheduled": 2, "cancel": 2, "abandon": 2}


def plan_jobs(total: int, mix: dict[str, int], rng: random.Random) -> dict[str, str]:
    """`total` new job ids with their kinds, in push order (the kinds shuffled)."""
    weights = sum(mix.values())
    kinds = [k for k, parts in mix.items() for _ in range(total * parts // weights)]
    kinds += ["ack"] * (total - len(kinds))
    rng.shuffle(kinds)
    ids = UUIDv7Generator()
    return {ids.new(int(time.time() * 1000)): kind for kind in kinds}


@dataclass
class Workload:
    url: str
    plan: dict[str, str]  # job id -> kind, in push order
    queue: str = "faults"
    workers: int = 3
    fetch_count: int = 10
    push_interval_s: float = 0.008  # paces the producer so faults land while pushes go on
    work_s: float = 0.005  # "executing" a job, so workers hold leases when a fault hits
    visibility_timeout_ms: int = 10_000
    abandon_visibility_ms: int = 2_000
    schedule_in: str = "+PT3S"
    settle_deadline_s: float = 30.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    accepted: set[str] = field(default_factory=set)
    created: set[str] = field(default_factory=set)  # answered 201 (the rest: 409 duplicate)
    push_attempts: Counter[str] = field(default_factory=Counter)
    push_throttled: int = 0  # 429 answers to pushes
    fetches: Counter[str] = field(default_factory=Counter)
    reported: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    refused_settles: int = 0  # 409 on ack/nack: the lease was lost to a fault
    transport_errors: int = 0
    unavailable: Counter[str] = field(default_factory=Counter)  # 503 answers, per operation
    unexpected: list[str] = field(default_factory=list)  # answers no fault explains
    threads: list[threading.Thread] = field(default_factory=list)

    # --- client threads --------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any] | None:
        """One request; None when it must be retried: the daemon is unreachable (an outage) or
        answered 503. Any other 5xx, and a 2xx whose body is not JSON, is recorded as
        unexpected (and retried, so the run goes on and shows the rest)."""
        try:
            status, reply = request(method, self.url + path, body, timeout=10.0)
        except TRANSPORT_ERRORS:
            with self.lock:
                self.transport_errors += 1
            return None
        except ValueError as exc:  # json.loads of a 2xx body
            self._unexpected(f"{method} {path} answered a 2xx that is not JSON: {exc}")
            return None
        if status == 503:
            with self.lock:
                self.unavailable[path.rsplit("/", 1)[-1] if method != "DELETE" else "cancel"] += 1
            return None
        if status >= 500:
            self._unexpected(f"{method} {path} answered {status} {reply}")
            return None
        if 200 <= status < 300 and not isinstance(reply, dict):
            self._unexpected(f"{method} {path} answered {status} with {reply!r}")
            return None
        return status, reply

    def body(self, job_id: str, kind: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "queue": self.queue, "visibility_timeout_ms": self.visibility_timeout_ms,
        }  # fmt: skip
        if kind == "fail":
            options["retry"] = {"max_attempts": 1}
        elif kind == "retry":
            options["retry"] = {"max_attempts": 3, "initial_interval": "PT1S", "jitter": False}
        elif kind == "scheduled":
            options["delay_until"] = self.schedule_in
        elif kind == "cancel":
            options["delay_until"] = "+PT120S"
        elif kind == "abandon":
            options["visibility_timeout_ms"] = self.abandon_visibility_ms
        return {"id": job_id, "type": f"fault.{kind}", "args": [{"kind": kind}],
                "options": options}  # fmt: skip

    def produce(self) -> None:
        for job_id, kind in self.plan.items():
            if self._push(job_id, kind) and kind == "cancel":
                self._cancel(job_id)
            time.sleep(self.push_interval_s)

    def _push(self, job_id: str, kind: str) -> bool:
        """Push until 201, or 409 duplicate (an earlier attempt got through)."""
        while not self.stop.is_set():
            with self.lock:
                self.push_attempts[job_id] += 1
            answer = self.call("POST", "/ojs/v1/jobs", self.body(job_id, kind))
            if answer is not None:
                status, body = answer
                if status == 201 and body.get("job", {}).get("id") != job_id:
                    self._unexpected(f"push of {job_id} answered 201 {body}")
                    return False
                if status == 201 or (status == 409 and body["error"]["code"] == "duplicate"):
                    with self.lock:
                        self.accepted.add(job_id)
                        if status == 201:
                            self.created.add(job_id)
                    return True
                if status == 429:  # backpressure: retried, as its Retry-After invites
                    with self.lock:
                        self.push_throttled += 1
                else:
                    self._unexpected(f"push of {job_id} answered {status} {body}")
                    return False
            time.sleep(0.05)
        return False

    def _cancel(self, job_id: str) -> None:
        deadline = time.monotonic() + self.settle_deadline_s
        while time.monotonic() < deadline and not self.stop.is_set():
            answer = self.call("DELETE", f"/ojs/v1/jobs/{job_id}")
            if answer is None:
                time.sleep(0.1)
                continue
            status, body = answer
            state = (
                body["job"]["state"]
                if status == 200
                else body["error"]["details"].get("current_state")
            )
            if status not in (200, 409) or state != "cancelled":
                self._unexpected(f"cancel of {job_id} answered {status} {body}")
            with self.lock:
                self.reported[job_id].append("cancelled")
            return

    def work(self, worker_id: str) -> None:
        while not self.stop.is_set():
            answer = self.call(
                "POST", "/ojs/v1/workers/fetch",
                {"queues": [self.queue], "count": self.fetch_count, "worker_id": worker_id},
            )  # fmt: skip
            if answer is None:
                time.sleep(0.1)
                continue
            status, body = answer
            if status != 200 or not isinstance(body.get("jobs"), list):
                self._unexpected(f"fetch answered {status} {body}")
                time.sleep(0.1)
                continue
            for job in body["jobs"]:
                with self.lock:
                    self.fetches[job["id"]] += 1
                    first_run = self.fetches[job["id"]] == 1
                kind = job["args"][0]["kind"]
                time.sleep(self.work_s)
                if kind == "abandon" and first_run:
                    continue  # the worker died holding it: no ack, no heartbeat
                self._settle(worker_id, job, kind)

    def _settle(self, worker_id: str, job: dict[str, Any], kind: str) -> None:
        """Ack or nack as the kind says; retry through an outage until the daemon answers."""
        if kind in ("fail", "retry") and not (kind == "retry" and job["attempt"] > 1):
            retryable = kind == "retry"
            error = {"code": "boom", "message": "told to fail", "retryable": retryable}
            path, body = "/ojs/v1/workers/nack", {"job_id": job["id"], "error": error}
        else:
            path, body = "/ojs/v1/workers/ack", {"job_id": job["id"], "result": {"ok": True}}
        body["worker_id"] = worker_id
        deadline = time.monotonic() + self.settle_deadline_s
        while time.monotonic() < deadline and not self.stop.is_set():
            answer = self.call("POST", path, body)
            if answer is None:
                time.sleep(0.1)
                continue
            status, reply = answer
            with self.lock:
                if status == 200:
                    if reply["state"] in TERMINAL:
                        self.reported[job["id"]].append(reply["state"])
                elif status == 409:
                    self.refused_settles += 1  # someone else holds it now; it will be re-run
                else:
                    self.unexpected.append(f"{path} {job['id']} answered {status} {reply}")
            return

    def _unexpected(self, what: str) -> None:
        with self.lock:
            self.unexpected.append(what)

    # --- driving ---------------------------------------------------------------------------

    def start(self) -> Workload:
        self.threads = [threading.Thread(target=self.produce, name="producer", daemon=True)]
        self.threads += [
            threading.Thread(target=self.work, args=(f"w{n}",), name=f"worker-{n}", daemon=True)
            for n in range(self.workers)
        ]
        for thread in self.threads:
            thread.start()
        return self

    def pushed(self) -> int:
        with self.lock:
            return len(self.accepted)

    def finished(self) -> int:
        with self.lock:
            return len(self.reported)

    def wait_for(self, what: str, condition: Any, deadline_s: float = 60.0) -> None:
        deadline = time.monotonic() + deadline_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            assert all(t.is_alive() for t in self.threads[1:]), "a worker thread died"
            time.sleep(0.01)

    def finish(self, deadline_s: float, stall_s: float | None = None) -> Ledger:
        """Wait for the producer, then for every job to be terminal (see
        `wait_until_all_terminal`); stop the clients and read every job back with them quiet."""
        producer = self.threads[0]
        producer.join(deadline_s)
        assert not producer.is_alive(), "the producer never got every push accepted"
        wait_until_all_terminal(self.url, list(self.plan), deadline_s, stall_s)
        self.stop.set()
        for thread in self.threads[1:]:
            thread.join(self.settle_deadline_s + 15)
        return Ledger(self, read_jobs(self.url, list(self.plan)))


@dataclass
class Ledger:
    """What happened to every planned job, checked against its kind."""

    run: Workload
    jobs: dict[str, dict[str, Any] | None]

    def states(self) -> dict[str, str | None]:
        return {i: state_of(j) for i, j in self.jobs.items()}

    def lost(self) -> list[str]:
        return [i for i in self.run.accepted if self.jobs.get(i) is None]

    def stuck(self) -> Counter[str]:
        """Accepted jobs not terminal, counted by state and kind ("active abandon")."""
        return Counter(
            f"{s} {self.run.plan[i]}"
            for i, s in self.states().items()
            if i in self.run.accepted and s not in TERMINAL
        )

    def wrong(self) -> dict[str, tuple[str | None, str]]:
        """Jobs whose terminal state is not the one their kind must end in."""
        states = self.states()
        out = {}
        for job_id, kind in self.run.plan.items():
            want = KINDS[kind].final_state
            if states[job_id] in TERMINAL and states[job_id] != want:
                out[job_id] = (states[job_id], want)
        return out

    def contradictions(self) -> dict[str, list[str]]:
        """Jobs for which clients were told a terminal state other than the final one, or
        two different terminal states: a job must end in exactly one."""
        states = self.states()
        return {
            i: told
            for i, told in self.run.reported.items()
            if len(set(told)) > 1 or told[0] != states.get(i)
        }

    def duplicates(self) -> dict[str, int]:
        """Extra executions per job: fetches beyond what its kind needs."""
        out = {}
        for job_id, kind in self.run.plan.items():
            extra = self.run.fetches[job_id] - KINDS[kind].runs
            if extra > 0:
                out[job_id] = extra
        return out

    def miscounted(self, lost_leases: int = 0) -> dict[str, str]:
        """Jobs whose attempt or error history does not fit their kind. The attempt is one per
        lease handed out: at least what the kind needs, at most what the workers fetched (plus
        `lost_leases`, leases whose answer a killed daemon never sent). An error code the kind
        does not cause is only allowed for a lease that lapsed or was cut by a crash; a failed
        job's last error is the worker's."""
        out = {}
        for job_id, kind_name in self.run.plan.items():
            job, kind = self.jobs.get(job_id), KINDS[kind_name]
            if job is None or job["state"] not in TERMINAL:
                continue  # reported as lost or stuck
            attempt, fetched = job.get("attempt", 0), self.run.fetches[job_id]
            codes = [e.get("code") for e in job.get("errors") or []]
            spare = set(codes) - set(kind.errors) - {"visibility_timeout"}
            if not kind.runs <= attempt <= max(fetched + lost_leases, kind.runs):
                out[job_id] = f"{kind_name}: attempt {attempt}, fetched {fetched}, errors {codes}"
            elif missing := [c for c in kind.errors if c not in codes]:
                out[job_id] = f"{kind_name}: no {missing} in errors {codes}"
            elif spare:
                out[job_id] = f"{kind_name}: unexplained errors {codes}"
            elif kind_name == "fail" and (job.get("error") or {}).get("code") != "boom":
                out[job_id] = f"fail: last error {job.get('error')}"
        return out

    def check(
        self,
        max_duplicate_runs: int | None = None,
        lost_leases: int = 0,
        unavailable_ok: tuple[str, ...] = ("jobs",),
    ) -> None:
        """At-least-once, nothing lost, one terminal state each, attempts and errors as the
        kind says, duplicates bounded (default: 5 % of the jobs), 503 only where the fault
        explains it (`unavailable_ok`: the last path segment, "cancel" for DELETE): fail with
        the evidence."""
        run = self.run
        assert not run.unexpected, f"unexplained answers: {run.unexpected[:5]}"
        refused = {op: n for op, n in run.unavailable.items() if op not in unavailable_ok}
        assert not refused, f"503 where the fault does not explain it: {refused}"
        assert run.accepted == set(run.plan), "some pushes were never accepted"
        lost = self.lost()
        assert not lost, f"{len(lost)} accepted jobs are gone: {lost[:5]}"
        stuck = self.stuck()
        assert not stuck, f"jobs not terminal at the deadline: {dict(stuck)}"
        wrong = self.wrong()
        assert not wrong, f"{len(wrong)} in the wrong terminal state (got, want): " + str(
            list(wrong.items())[:5]
        )
        told = self.contradictions()
        assert not told, f"clients were told other terminal states: {list(told.items())[:5]}"
        never = [i for i, k in run.plan.items() if KINDS[k].runs and not run.fetches[i]]
        assert not never, f"jobs finished without ever being fetched: {never[:5]}"
        ran_cancelled = [i for i, k in run.plan.items() if k == "cancel" and run.fetches[i]]
        assert not ran_cancelled, f"cancelled jobs were handed to workers: {ran_cancelled}"
        miscounted = self.miscounted(lost_leases)
        assert not miscounted, f"{len(miscounted)} with the wrong attempt or errors: " + str(
            list(miscounted.items())[:5]
        )
        bound = len(run.plan) // 20 if max_duplicate_runs is None else max_duplicate_runs
        extra = sum(self.duplicates().values())
        assert extra <= bound, f"{extra} duplicate executions, more than {bound}"

    def line(self, scenario: str, seconds: float, **extra: Any) -> str:
        dups = self.duplicates()
        notes = "".join(f"; {k.replace('_', ' ')} {v}" for k, v in extra.items())
        return (
            f"{scenario}: {len(self.run.plan)} jobs, lost {len(self.lost())}, "
            f"stuck {sum(self.stuck().values())}, wrong {len(self.wrong())}, duplicate "
            f"executions {len(dups)} jobs ({sum(dups.values())} extra runs), "
            f"503s {dict(self.run.unavailable)}, push 429s {self.run.push_throttled}, "
            f"push 409-duplicate "
            f"{len(self.run.accepted - self.run.created)}, refused acks "
            f"{self.run.refused_settles}, {seconds:.1f}s{notes}"
        )


def read_jobs(url: str, ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """GET every id; None for a job the daemon does not know (lost)."""
    jobs: dict[str, dict[str, Any] | None] = {}
    for job_id in ids:
        status, body = request("GET", f"{url}/ojs/v1/jobs/{job_id}", timeout=10.0)
        assert status in (200, 404), f"GET {job_id} answered {status} {body}"
        jobs[job_id] = body["job"] if status == 200 else None
    return jobs


def state_of(job: dict[str, Any] | None) -> str | None:
    return None if job is None else str(job["state"])


def wait_until_all_terminal(
    url: str, ids: list[str], deadline_s: float, stall_s: float | None = None
) -> None:
    """Poll until every job is terminal, the deadline passes, or (with `stall_s`) no job has
    changed state for that long: every timer of a workload is shorter, so it is stuck."""
    deadline = time.monotonic() + deadline_s
    pending = list(ids)
    last: dict[str, str | None] = {}
    changed_at = time.monotonic()
    while pending and time.monotonic() < deadline:
        jobs = read_jobs(url, pending)
        now = {i: state_of(jobs[i]) for i in pending}
        if now != last:
            last, changed_at = now, time.monotonic()
        elif stall_s is not None and time.monotonic() - changed_at > stall_s:
            return
        pending = [i for i in pending if now[i] not in TERMINAL]
        if pending:
            time.sleep(0.25)


def metric(url: str, name: str) -> float:
    """One unlabelled sample from GET /metrics (0 when absent)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return 0.0
