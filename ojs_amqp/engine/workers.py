"""What the daemon knows about HTTP workers: the state each one last announced (`running`,
`quiet`, `drain`, `terminate`), when it was last seen and how many jobs it said it runs.

Fed by `POST /ojs/v1/workers/beat` (ojs-graceful-shutdown), heartbeats and fetches, and by
native AMQP workers (their hello, heartbeats and reports); read by
`GET /ojs/v1/workers/{id}/health`, the admin API's worker list, and by fetch, which hands a
worker that is quiet or draining no new job (graceful-shutdown §5.1). In memory only,
bounded: a worker not seen for `FORGET_AFTER_MS` is forgotten, and one not seen for
`STALE_AFTER_MS` reads as `stale`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

#: The states a worker may announce, with the synonyms SDKs and the suite use.
WORKER_STATES = {
    "running": "running",
    "active": "running",
    "quiet": "quiet",
    "drain": "drain",
    "draining": "drain",
    "shutting_down": "drain",
    "terminate": "terminate",
    "terminating": "terminate",
    "stopped": "terminate",
}
#: States in which a worker gets no new jobs.
NOT_FETCHING = frozenset({"quiet", "drain", "terminate"})
FORGET_AFTER_MS = 10 * 60 * 1000
#: A worker silent this long is shown `stale` (and may be deregistered by an admin).
STALE_AFTER_MS = 60 * 1000
MAX_WORKERS = 10_000
#: Job ids remembered per native worker (what it holds, from its heartbeats).
MAX_HELD = 1000


@dataclass(slots=True)
class WorkerInfo:
    worker_id: str
    state: str
    last_seen_ms: int
    active_jobs: int | None = None
    #: "http" (fetch, heartbeat, beat) or "native" (the AMQP binding).
    kind: str = "http"
    first_seen_ms: int = 0
    queues: list[str] = field(default_factory=list)
    #: Jobs a native worker announced it runs (heartbeats), until it reports on them.
    held: set[str] = field(default_factory=set)

    def shown_state(self, now_ms: int) -> str:
        """The state an operator sees: the announced one, or `stale` once silent."""
        return "stale" if now_ms - self.last_seen_ms > STALE_AFTER_MS else self.state


class WorkerRegistry:
    def __init__(self) -> None:
        self._workers: OrderedDict[str, WorkerInfo] = OrderedDict()

    def beat(self, worker_id: str, state: str | None, active_jobs: int | None, now_ms: int) -> str:
        """Record a worker's beat; returns its state (the announced one, else the last)."""
        info = self._workers.pop(worker_id, None)
        if info is None:
            info = WorkerInfo(worker_id, "running", now_ms, first_seen_ms=now_ms)
        if state is not None:
            info.state = WORKER_STATES[state]
        info.last_seen_ms = now_ms
        if active_jobs is not None:
            info.active_jobs = active_jobs
        self._workers[worker_id] = info
        self._forget(now_ms)
        return info.state

    def seen(self, worker_id: str | None, now_ms: int) -> None:
        """A fetch or heartbeat: the worker is alive, in whatever state it announced."""
        if worker_id:
            self.beat(worker_id, None, None, now_ms)

    def seen_on(
        self, worker_id: str | None, now_ms: int, queues: list[str], kind: str = "http"
    ) -> None:
        """A fetch or a native worker's message: alive, consuming `queues` (added to those
        seen before; at most 100 are kept)."""
        if not worker_id:
            return
        self.beat(worker_id, None, None, now_ms)
        info = self._workers[worker_id]
        info.kind = kind
        for queue in queues:
            if queue not in info.queues and len(info.queues) < 100:
                info.queues.append(queue)

    def holds(self, worker_id: str | None, job_id: str, done: bool) -> None:
        """A native worker runs `job_id` (a heartbeat), or no longer does (`done`: it
        reported on it)."""
        info = self._workers.get(worker_id) if worker_id else None
        if info is None:
            return
        if done:
            info.held.discard(job_id)
        elif len(info.held) < MAX_HELD:
            info.held.add(job_id)

    def all(self) -> list[WorkerInfo]:
        """Every worker known, most recently seen first."""
        return list(reversed(self._workers.values()))

    def quiet(self, worker_id: str) -> bool:
        """An admin quiets a worker: fetch hands it nothing from now on (its heartbeats
        carry the directive too); when it was last seen is left as it was."""
        info = self._workers.get(worker_id)
        if info is None:
            return False
        info.state = "quiet"
        return True

    def forget(self, worker_id: str) -> bool:
        return self._workers.pop(worker_id, None) is not None

    def get(self, worker_id: str) -> WorkerInfo | None:
        return self._workers.get(worker_id)

    def fetching(self, worker_id: str | None) -> bool:
        info = self._workers.get(worker_id) if worker_id else None
        return info is None or info.state not in NOT_FETCHING

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for info in self._workers.values():
            out[info.state] = out.get(info.state, 0) + 1
        return out

    def _forget(self, now_ms: int) -> None:
        cutoff = now_ms - FORGET_AFTER_MS
        while self._workers:
            oldest = next(iter(self._workers.values()))
            if oldest.last_seen_ms >= cutoff and len(self._workers) <= MAX_WORKERS:
                return
            self._workers.popitem(last=False)

    def clear(self) -> None:
        self._workers.clear()
