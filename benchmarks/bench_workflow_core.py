#!/usr/bin/env python
"""CPU of the pure workflow core per step, against a plain job's pure core path, same run.

No broker, no store, no HTTP: this measures only what the workflow rules add in Python, so the
wiring's target (a workflow step within 1.5x a plain job's push+fetch+ack, daemon CPU) starts
from a known share. Both sides run interleaved, best of R rounds each (the machine is shared):

  plain      parse_enqueue (a push's parse) + lifecycle.fetch + lifecycle.ack, per job
  <shape>    the same three moves for each job of the workflow, plus the workflow's part:
             parse_workflow (amortised per job), advance.job_started, advance.job_finished
             (which creates successors and callbacks), per job; shapes: a 10-step chain, a
             100-job group, a 1,000-job batch with two callbacks (jobs finished in random order)

    python benchmarks/bench_workflow_core.py [--rounds R]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

from ojs_amqp.core import lifecycle
from ojs_amqp.core.envelope import parse_enqueue
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.workflow import advance
from ojs_amqp.core.workflow.definition import parse_workflow

NOW = 1_700_000_000_000


def plain(count: int) -> None:
    ids = UUIDv7Generator()
    for i in range(count):
        job = parse_enqueue({"type": "bench.job", "args": [i]}, now_ms=NOW, new_id=ids.new(NOW))
        active = lifecycle.fetch(job, NOW + 1, "w")
        lifecycle.ack(active, NOW + 2, {"i": i})


def workflow(body: dict[str, Any], seed: int) -> int:
    """Run the workflow to its end; return how many jobs ran."""
    ids = UUIDv7Generator()
    made = parse_workflow(body, now_ms=NOW, new_id=lambda: ids.new(NOW))
    wf, ready, ran = made.workflow, list(made.jobs), 0
    pick = random.Random(seed).randrange
    while ready:
        at = pick(len(ready))
        ready[at], ready[-1] = ready[-1], ready[at]
        job = ready.pop()
        active = lifecycle.fetch(job, NOW + 1, "w")
        wf = advance.job_started(wf, active, NOW + 1).workflow
        step = advance.job_finished(wf, lifecycle.ack(active, NOW + 2, {"i": ran}), NOW + 2)
        wf = step.workflow
        ready.extend(step.create)
        ran += 1
    assert wf.state.terminal, wf.state
    return ran


def shapes() -> dict[str, dict[str, Any]]:
    def jobs(n: int) -> list[dict[str, Any]]:
        return [{"type": "bench.job", "args": [i]} for i in range(n)]

    cb = {"type": "bench.cb", "args": []}
    return {
        "chain-10": {"type": "chain", "steps": jobs(10)},
        "group-100": {"type": "group", "jobs": jobs(100)},
        "batch-1000": {
            "type": "batch",
            "jobs": jobs(1000),
            "callbacks": {"on_complete": cb, "on_success": cb},
        },
    }


def us_per_job(run: Callable[[], int]) -> float:
    start = time.process_time()
    count = run()
    return (time.process_time() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{'shape':<12} {'us/job':>8} {'plain us/job':>13} {'ratio':>6}")
    for name, body in shapes().items():
        ran = workflow(body, 0)
        flow = base = float("inf")
        for seed in range(args.rounds):  # interleaved, best of each
            flow = min(flow, us_per_job(lambda body=body, seed=seed: workflow(body, seed)))
            base = min(base, us_per_job(lambda ran=ran: (plain(ran), ran)[1]))
        print(f"{name:<12} {flow:>8.1f} {base:>13.1f} {flow / base:>6.2f}x")


if __name__ == "__main__":
    main()
