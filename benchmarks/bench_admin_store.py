#!/usr/bin/env python
"""What the admin API's indexes cost the store, and what its reads cost on a large store.

1. Write cost: the same N jobs inserted, then updated three times (as fetch, ack and a
   retry would), into a fresh SqliteJobStore with and without the admin indexes
   (store/admin_queries.py), in interleaved rounds; prints each side's median and the ratio.
2. Read cost: a store of M jobs over Q queues (mixed states, four types), then the reads the
   admin API and a dashboard make: stats (counts by queue and state), a queue's jobs by
   state, jobs by type, the newest jobs, a time window, dead letters by queue, dead-letter
   stats; median of R runs each, in ms.

No broker: the store only. `python benchmarks/bench_admin_store.py [--jobs N] [--big M]`
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ojs_amqp.core.job import Job, JobState, evolve
from ojs_amqp.store.admin_queries import JobQuery, SqliteAdminQueries
from ojs_amqp.store.sqlite import SqliteJobStore

STATES = [JobState.AVAILABLE, JobState.COMPLETED, JobState.COMPLETED, JobState.ACTIVE,
          JobState.SCHEDULED, JobState.DISCARDED]  # fmt: skip


def job(i: int, queues: int, base_ms: int) -> Job:
    return Job(
        id=f"01a2{i:028x}", type=f"type.{i % 4}", queue=f"q{i % queues}",
        args=[{"n": i, "to": "someone@example.com"}], state=JobState.AVAILABLE,
        created_at_ms=base_ms + i, meta={"tenant": "acme"},
    )  # fmt: skip


async def write_round(path: Path, n: int, indexed: bool) -> float:
    store = SqliteJobStore(str(path))
    await store.open()
    if indexed:
        SqliteAdminQueries(store.db)
    jobs = [job(i, 10, 1_700_000_000_000) for i in range(n)]
    start = time.perf_counter()
    for chunk in range(0, n, 100):  # 100 writers per loop turn, as under load
        await asyncio.gather(*(store.insert(j, published=True) for j in jobs[chunk : chunk + 100]))
    for step, state in enumerate((JobState.ACTIVE, JobState.COMPLETED, JobState.AVAILABLE)):
        moved = [evolve(j, state=state, copy=j.copy + step + 1) for j in jobs]
        for chunk in range(0, n, 100):
            await asyncio.gather(*(store.update(j) for j in moved[chunk : chunk + 100]))
    elapsed = time.perf_counter() - start
    await store.close()
    return elapsed


async def fill(path: Path, m: int, queues: int) -> SqliteJobStore:
    store = SqliteJobStore(str(path))
    await store.open()
    SqliteAdminQueries(store.db)
    base = 1_700_000_000_000
    for chunk in range(0, m, 1000):
        batch = []
        for i in range(chunk, min(m, chunk + 1000)):
            state = STATES[i % len(STATES)]
            j = job(i, queues, base)
            j = evolve(j, state=state, dead_letter=state is JobState.DISCARDED,
                       completed_at_ms=base + i + 5 if state is JobState.COMPLETED else None,
                       discarded_at_ms=base + i + 5 if state is JobState.DISCARDED else None,
                       error={"code": "boom"} if state is JobState.DISCARDED else None)  # fmt: skip
            batch.append(store.insert(j, published=True))
        await asyncio.gather(*batch)
    return store


async def timed(fn: Callable[[], Awaitable[object]], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()  # the SQLite adapter's SQL runs synchronously inside the coroutine
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per write round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big", type=int, default=200_000, help="jobs in the read store")
    parser.add_argument("--queues", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            for indexed in (False, True) if r % 2 == 0 else (True, False):
                path = Path(tmp) / f"w{r}{indexed}.db"
                times[indexed].append(await write_round(path, args.jobs, indexed))
        plain, indexed_s = statistics.median(times[False]), statistics.median(times[True])
        per = 4 * args.jobs
        print(f"writes ({args.jobs} inserts + {3 * args.jobs} updates, {args.rounds} rounds):")
        print(f"  store alone        {plain * 1e6 / per:7.1f} µs per write")
        print(f"  with admin indexes {indexed_s * 1e6 / per:7.1f} µs per write")
        print(f"  ratio              {indexed_s / plain:7.2f}x")

        start = time.perf_counter()
        store = await fill(Path(tmp) / "big.db", args.big, args.queues)
        print(f"\nread store: {args.big} jobs, {args.queues} queues "
              f"(filled in {time.perf_counter() - start:.0f} s)")  # fmt: skip
        q = SqliteAdminQueries(store.db)
        reads: dict[str, Callable[[], Awaitable[object]]] = {
            "stats: counts by queue and state": lambda: q.counts(),
            "one queue's counts": lambda: q.counts("q7"),
            "a queue's available jobs, page 1": lambda: q.jobs(
                JobQuery(queue="q7", states=("available",)), 25, 0, True),
            "jobs of one type, page 1": lambda: q.jobs(JobQuery(type="type.2"), 25, 0, True),
            "newest jobs, page 1": lambda: q.jobs(JobQuery(), 25, 0, True),
            "a time window, page 1": lambda: q.jobs(
                JobQuery(since_ms=1_700_000_050_000, until_ms=1_700_000_060_000), 25, 0, True),
            "dead letters of a queue, page 1": lambda: q.jobs(
                JobQuery(queue="q7", dead_letter=True), 25, 0, True),
            "dead-letter stats": lambda: q.dead_letter_counts(),
        }  # fmt: skip
        for name, read in reads.items():
            print(f"  {name:36s} {await timed(read, 5):8.1f} ms (median of 5)")
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
