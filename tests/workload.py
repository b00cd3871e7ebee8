"""A mixed OJS workload driven over HTTP by real client threads, and its ledger.

A producer thread pushes jobs with client-chosen UUIDv7 ids while HTTP worker threads fetch,
ack and nack them, all riding out outages the way real clients do: retry the same id on
connection errors and 5xx, take 409 `duplicate` on a push as "accepted earlier", take 409 on
an ack as "the lease was lost" (the job will come back). Each job's kind fixes what its worker
does and the one terminal state it must end in; `Workload.ledger` checks that and counts
duplicate executions. Used by the SIGKILL acceptance test and the fault-injection suite.

Every worker records what it was told about each attempt it was handed (`Attempt`), and
counts its fetches that went out and got no answer: the ledger (tests/ledger.py) judges each
job's history by that, not by a tolerance.
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
from tests.ledger import KINDS, NO_ANSWER, REFUSED, TERMINAL, UNAVAILABLE, Attempt, Ledger

#: What a client sees when the daemon is unreachable. Not ValueError: a garbled 2xx body from
#: a live daemon is a bug, recorded as unexpected, not an outage.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)
__all__ = ["KINDS", "MIX", "TERMINAL", "Ledger", "Workload", "plan_jobs"]

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
    #: job id -> attempt -> what the worker handed that attempt sent and was told
    attempts: dict[str, dict[int, Attempt]] = field(default_factory=lambda: defaultdict(dict))
    twice: Counter[str] = field(default_factory=Counter)  # one attempt handed out again
    unanswered_fetches: int = 0  # sent, no answer: up to `fetch_count` leases nobody saw
    unavailable: Counter[str] = field(default_factory=Counter)  # 503 answers, per operation
    unexpected: list[str] = field(default_factory=list)  # answers no fault explains
    threads: list[threading.Thread] = field(default_factory=list)

    # --- client threads --------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any] | str:
        """One request: (status, body), or why it must be retried: REFUSED (the connection
        was refused: the request never reached a daemon), NO_ANSWER (it went out and the
        connection broke or timed out: it may have been done), UNAVAILABLE (503). Any other
        5xx, and a 2xx whose body is not JSON, is recorded as unexpected (and counts as
        NO_ANSWER, so the run goes on and shows the rest)."""
        try:
            status, reply = request(method, self.url + path, body, timeout=10.0)
        except TRANSPORT_ERRORS as exc:
            with self.lock:
                self.transport_errors += 1
            return REFUSED if _refused(exc) else NO_ANSWER
        except ValueError as exc:  # json.loads of a 2xx body
            self._unexpected(f"{method} {path} answered a 2xx that is not JSON: {exc}")
            return NO_ANSWER
        if status == 503:
            with self.lock:
                self.unavailable[path.rsplit("/", 1)[-1] if method != "DELETE" else "cancel"] += 1
            return UNAVAILABLE
        if status >= 500:
            self._unexpected(f"{method} {path} answered {status} {reply}")
            return NO_ANSWER
        if 200 <= status < 300 and not isinstance(reply, dict):
            self._unexpected(f"{method} {path} answered {status} with {reply!r}")
            return NO_ANSWER
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
            if not isinstance(answer, str):
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
            if isinstance(answer, str):
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
            if isinstance(answer, str):
                if answer == NO_ANSWER:
                    with self.lock:
                        self.unanswered_fetches += 1
                time.sleep(0.1)
                continue
            status, body = answer
            if status != 200 or not isinstance(body.get("jobs"), list):
                self._unexpected(f"fetch answered {status} {body}")
                time.sleep(0.1)
                continue
            for job in body["jobs"]:
                attempt = Attempt(worker_id)
                with self.lock:
                    self.fetches[job["id"]] += 1
                    first_run = self.fetches[job["id"]] == 1
                    if job["attempt"] in self.attempts[job["id"]]:
                        self.twice[job["id"]] += 1
                    self.attempts[job["id"]][job["attempt"]] = attempt
                kind = job["args"][0]["kind"]
                time.sleep(self.work_s)
                if kind == "abandon" and first_run:
                    continue  # the worker died holding it: no ack, no heartbeat
                self._settle(worker_id, job, kind, attempt)

    def _settle(self, worker_id: str, job: dict[str, Any], kind: str, attempt: Attempt) -> None:
        """Ack or nack as the kind says; retry through an outage until the daemon answers,
        noting every answer (or its absence) on the attempt."""
        if kind in ("fail", "retry") and not (kind == "retry" and job["attempt"] > 1):
            attempt.sent, attempt.code, attempt.retryable = "nack", "boom", kind == "retry"
            error = {"code": "boom", "message": "told to fail", "retryable": kind == "retry"}
            path, body = "/ojs/v1/workers/nack", {"job_id": job["id"], "error": error}
        else:
            attempt.sent = "ack"
            path, body = "/ojs/v1/workers/ack", {"job_id": job["id"], "result": {"ok": True}}
        body["worker_id"] = worker_id
        deadline = time.monotonic() + self.settle_deadline_s
        while time.monotonic() < deadline and not self.stop.is_set():
            answer = self.call("POST", path, body)
            if isinstance(answer, str):
                with self.lock:
                    attempt.answers.append(answer)
                time.sleep(0.1)
                continue
            status, reply = answer
            state = reply.get("state") if status == 200 else _current_state(reply)
            with self.lock:
                attempt.answers.append(f"{status} {state}")
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

    def all_attempts(self) -> list[Attempt]:
        with self.lock:
            return [a for per_job in self.attempts.values() for a in per_job.values()]

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


def _refused(exc: BaseException) -> bool:
    """A refused connection (urllib wraps it in URLError): the request never left."""
    reason = getattr(exc, "reason", exc)
    return isinstance(reason, ConnectionRefusedError) or isinstance(exc, ConnectionRefusedError)


def _current_state(reply: Any) -> str | None:
    """The state a 409 names (`details.current_state`), when it names one."""
    details = reply.get("error", {}).get("details") if isinstance(reply, dict) else None
    return details.get("current_state") if isinstance(details, dict) else None


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
