"""What every fault scenario shares: its size (CI or soak), a seeded random source, and the
observation of a broker outage from the HTTP side (health degraded, pushes refused fast)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from ojs_amqp.core.ids import UUIDv7Generator
from tests.daemon import request
from tests.workload import MIX, Workload, plan_jobs


@dataclass(frozen=True)
class Size:
    name: str
    jobs: int
    faults: int  # how many times the fault is injected in one run
    outage_s: float  # how long the broker stays away
    deadline_s: float  # for every job to reach its terminal state after the last fault


CI = Size("ci", jobs=150, faults=1, outage_s=3.0, deadline_s=60.0)
SOAK = Size("soak", jobs=2000, faults=6, outage_s=6.0, deadline_s=600.0)
#: No job of the workload waits longer than this for a timer (visibility 10 s, schedule 3 s,
#: retry 1-2 s), so a ledger that has not moved for this long is stuck, not slow.
STALL_S = 20.0

#: Parametrises a scenario with its CI size and its soak size (deselected unless OJS_SOAK=1).
SIZES = pytest.mark.parametrize(
    "size",
    [
        pytest.param(CI, id="ci"),
        pytest.param(SOAK, id="soak", marks=(pytest.mark.soak, pytest.mark.timeout(3600))),
    ],
)

#: The requests that publish a copy (a push; a nack puts the retry on the delay ladder):
#: while the broker is away or the topology is being repaired they may be answered 503, and
#: the client retries. Every other request (fetch, ack, cancel) must not be.
PUBLISHES = ("jobs", "nack")

#: A push while the broker is away must be refused within this (not hang until a timeout).
FAST_REFUSAL_S = 2.0


def seeded(scenario: str) -> random.Random:
    """Random fault timing that can be replayed: OJS_FAULT_SEED=<printed seed>."""
    seed = int(os.environ.get("OJS_FAULT_SEED") or random.randrange(2**32))
    print(f"\n{scenario}: OJS_FAULT_SEED={seed}")
    return random.Random(seed)


def workload(url: str, size: Size, rng: random.Random, **options: Any) -> Workload:
    return Workload(url, plan_jobs(size.jobs, MIX, rng), **options)


@dataclass
class Outage:
    """What HTTP clients saw while the broker was away."""

    degraded_after_s: float = -1.0  # health first answered 503
    back_after_s: float = -1.0  # health answered 200 again, counted from the restore
    probes: list[tuple[str, int, float]] = field(default_factory=list)  # id, status, seconds
    #: what fetch, ack (of a lease held from before) and cancel answered during the outage
    during: dict[str, tuple[int, Any]] = field(default_factory=dict)
    #: the jobs those were about: "held" (leased, then acked), "waiting" (available in the
    #: fetched queue), "scheduled" (cancelled)
    jobs: dict[str, str] = field(default_factory=dict)

    def slowest_probe_s(self) -> float:
        return max((s for _, _, s in self.probes), default=0.0)


def ride_out(
    url: str, take_down: Callable[[], None], bring_back: Callable[[], None], outage_s: float
) -> Outage:
    """Take the broker away for `outage_s`, probing health and pushes all along, then bring
    it back and wait until the daemon reports healthy again."""
    seen = Outage()
    ids = UUIDv7Generator()
    seen.jobs = _prepare_probes(url, ids)
    take_down()
    down_at = time.monotonic()
    while time.monotonic() - down_at < outage_s or seen.degraded_after_s < 0:
        assert time.monotonic() - down_at < outage_s + 10, "health never reported degraded"
        status, body = request("GET", f"{url}/ojs/v1/health", timeout=10)
        if status == 503 and seen.degraded_after_s < 0:
            assert body["status"] == "unhealthy", body
            seen.degraded_after_s = time.monotonic() - down_at
        if seen.degraded_after_s >= 0:
            probe = ids.new(int(time.time() * 1000))
            sent = time.monotonic()
            status, body = request(
                "POST", f"{url}/ojs/v1/jobs",
                {"id": probe, "type": "fault.probe", "args": [], "options": {"queue": "probe"}},
                timeout=30,
            )  # fmt: skip
            seen.probes.append((probe, status, time.monotonic() - sent))
            if not seen.during:
                seen.during = _probe_the_rest(url, seen.jobs)
        time.sleep(0.2)
    bring_back()
    back_at = time.monotonic()
    while request("GET", f"{url}/ojs/v1/health", timeout=10)[0] != 200:
        assert time.monotonic() - back_at < 60, "the daemon did not come back within 60 s"
        time.sleep(0.1)
    seen.back_after_s = time.monotonic() - back_at
    return seen


def _push(url: str, job_id: str, queue: str, **options: Any) -> None:
    body = {"id": job_id, "type": "fault.probe", "args": [], "options": {"queue": queue, **options}}
    status, reply = request("POST", f"{url}/ojs/v1/jobs", body, timeout=10)
    assert status == 201, reply


def _prepare_probes(url: str, ids: UUIDv7Generator) -> dict[str, str]:
    """Before the outage: a job leased and held, one waiting in its queue, one scheduled."""
    jobs = {name: ids.new(int(time.time() * 1000)) for name in ("held", "waiting", "scheduled")}
    _push(url, jobs["held"], "probe-held")
    status, body = request(
        "POST", f"{url}/ojs/v1/workers/fetch",
        {"queues": ["probe-held"], "worker_id": "probe", "visibility_timeout_ms": 120_000},
    )  # fmt: skip
    assert status == 200 and [j["id"] for j in body["jobs"]] == [jobs["held"]], body
    status, body = request("POST", f"{url}/ojs/v1/workers/fetch", {"queues": ["probe-waiting"]})
    assert (status, body) == (200, {"jobs": []})  # the daemon consumes the queue from now on
    _push(url, jobs["waiting"], "probe-waiting")
    _push(url, jobs["scheduled"], "probe-scheduled", delay_until="+PT300S")
    return jobs


def _probe_the_rest(url: str, jobs: dict[str, str]) -> dict[str, tuple[int, Any]]:
    """During the outage: fetch the queue that has a job waiting, and one never used (which the
    daemon would have to declare first), ack the held lease, cancel the scheduled job, and ask
    whether the daemon is ready."""
    fetch = {"queues": ["probe-waiting"], "worker_id": "probe"}
    ack = {"job_id": jobs["held"], "worker_id": "probe"}
    return {
        "fetch": request("POST", f"{url}/ojs/v1/workers/fetch", fetch, timeout=10),
        "fetch new queue": request(
            "POST", f"{url}/ojs/v1/workers/fetch", {"queues": ["probe-new"]}, timeout=10
        ),
        "ack": request("POST", f"{url}/ojs/v1/workers/ack", ack, timeout=10),
        "cancel": request("DELETE", f"{url}/ojs/v1/jobs/{jobs['scheduled']}", timeout=10),
        "ready": request("GET", f"{url}/ready", timeout=10),
    }


def summary(outages: list[Outage]) -> str:
    return (
        f"degraded after {max(o.degraded_after_s for o in outages) * 1000:.0f} ms, slowest "
        f"refused push {max(o.slowest_probe_s() for o in outages) * 1000:.0f} ms, healthy "
        f"{max(o.back_after_s for o in outages):.1f}s after the restore"
    )


def check_outages(url: str, outages: list[Outage]) -> None:
    """Pushes were refused with 503, fast; a refused push is enqueued at most once (it may
    be, had its message reached the broker), so a client retrying with its id is safe."""
    probes = [p for o in outages for p in o.probes]
    assert len(outages) == sum(1 for o in outages if o.probes), "an outage saw no push"
    noticed = max(o.degraded_after_s for o in outages)
    assert noticed < FAST_REFUSAL_S, f"health said unhealthy only {noticed:.1f}s into an outage"
    refused = [(i, st) for i, st, _ in probes if st != 503]
    assert not refused, f"pushes not refused with 503 while the broker was away: {refused}"
    slowest = max(o.slowest_probe_s() for o in outages)
    assert slowest < FAST_REFUSAL_S, f"a push hung {slowest:.1f}s while the broker was away"
    ids = {i for i, _, _ in probes}
    fetched: list[str] = []
    empty_fetches = 0
    while empty_fetches < 2:
        status, body = request(
            "POST", f"{url}/ojs/v1/workers/fetch", {"queues": ["probe"], "count": 100}
        )
        assert status == 200, body
        empty_fetches = 0 if body["jobs"] else empty_fetches + 1
        for job in body["jobs"]:
            fetched.append(job["id"])
            assert request("POST", f"{url}/ojs/v1/workers/ack", {"job_id": job["id"]})[0] == 200
    assert set(fetched) <= ids, "jobs nobody pushed showed up"
    assert len(fetched) == len(set(fetched)), "a refused push was enqueued twice"
    for outage in outages:
        _check_the_rest(url, outage)


def _check_the_rest(url: str, outage: Outage) -> None:
    """As docs/reliability.md says: while the broker is away fetch answers `{"jobs": []}` (503
    `backend_error` for a queue the daemon never consumed), ack and cancel work and `/ready`
    answers 503; afterwards
    the acked and cancelled jobs stay so and the waiting job is handed out once."""
    during, jobs = outage.during, outage.jobs
    assert during["fetch"] == (200, {"jobs": []}), f"fetch during the outage: {during['fetch']}"
    status, body = during["fetch new queue"]
    assert status == 503 and body["error"]["code"] == "backend_error", (status, body)
    status, body = during["ack"]
    assert status == 200 and body["state"] == "completed", f"ack during the outage: {body}"
    status, body = during["cancel"]
    assert status == 200 and body["job"]["state"] == "cancelled", f"cancel: {body}"
    status, body = during["ready"]
    assert status == 503 and body["ready"] is False, f"/ready during the outage: {status} {body}"
    for name, state in (("held", "completed"), ("scheduled", "cancelled")):
        status, body = request("GET", f"{url}/ojs/v1/jobs/{jobs[name]}")
        assert status == 200 and body["job"]["state"] == state, (name, body)
    handed: list[str] = []
    deadline = time.monotonic() + 15
    while not handed and time.monotonic() < deadline:
        status, body = request(
            "POST", f"{url}/ojs/v1/workers/fetch", {"queues": ["probe-waiting"], "count": 10}
        )
        assert status == 200, body
        handed += [j["id"] for j in body["jobs"]]
        if not handed:
            time.sleep(0.2)
    assert handed == [jobs["waiting"]], f"the waiting job after the outage: {handed}"
    assert request("POST", f"{url}/ojs/v1/workers/ack", {"job_id": handed[0]})[0] == 200
