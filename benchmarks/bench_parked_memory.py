#!/usr/bin/env python
"""Memory cost of parked timers: the daemon's RSS before and after 100,000 scheduled jobs.

The script starts the daemon (its own SQLite store, a random `bench-...` prefix, --test-mode),
pushes a warm-up of scheduled jobs, records the daemon's VmRSS (/proc/PID/status), pushes N
jobs over HTTP (POST /ojs/v1/jobs, C in flight) with options.scheduled_at one hour ahead
(absolute RFC 3339), waits, records VmRSS again and prints the growth against the target
(< 50 MB for 100,000 parked jobs). It also prints what RabbitMQ holds for them
(`rabbitmqctl -q list_queues name messages memory`, the run's queues) and the size of the
daemon's SQLite store. At the end it deletes every queue and exchange under the prefix.

    python benchmarks/bench_parked_memory.py [--jobs N] [--concurrency C] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from _common import (
    BASE,
    DEFAULT_AMQP_URL,
    Daemon,
    delete_topology,
    machine_info,
    post_json,
    rabbitmqctl_list,
    rss_kib,
)

TARGET_MB = 50.0
PARK_FOR_MS = 3_600_000
SETTLE_S = 5.0
PROGRESS_EVERY = 10_000


def rfc3339_ms(epoch_ms: int) -> str:
    seconds, millis = divmod(epoch_ms, 1000)
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{millis:03d}Z"
    )


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


@dataclass
class Pusher:
    session: aiohttp.ClientSession
    base: str
    queue: str
    pushed: int = 0
    started: float = field(default_factory=time.perf_counter)

    async def push(self, total: int, concurrency: int, progress: bool) -> float:
        url = f"{self.base}{BASE}/jobs"
        remaining = total
        start = time.perf_counter()

        async def one() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                due = time.time_ns() // 1_000_000 + PARK_FOR_MS
                body = {
                    "type": "bench.parked",
                    "args": [{"n": self.pushed}],
                    "options": {"queue": self.queue, "scheduled_at": rfc3339_ms(due)},
                }
                job = (await post_json(self.session, url, body, 201))["job"]
                if job.get("state") != "scheduled":
                    raise RuntimeError(f"pushed job is {job.get('state')}, not scheduled")
                self.pushed += 1
                if progress and self.pushed % PROGRESS_EVERY == 0:
                    rate = self.pushed / (time.perf_counter() - self.started)
                    print(f"  {self.pushed:>7,} pushed ({rate:,.0f}/s)", flush=True)

        await asyncio.gather(*(one() for _ in range(concurrency)))
        return time.perf_counter() - start


def broker_memory(prefix: str) -> list[tuple[str, int, int]]:
    """(queue, messages, memory bytes) for the run's non-empty queues."""
    rows = rabbitmqctl_list("queues", ("name", "messages", "memory"))
    out = []
    for row in rows:
        if len(row) != 3 or not row[0].startswith(prefix):
            continue
        if row[1].isdigit() and row[2].isdigit() and int(row[1]):
            out.append((row[0], int(row[1]), int(row[2])))
    return out


def store_bytes(workdir: Path) -> int:
    return sum(p.stat().st_size for p in workdir.glob("bench.db*"))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench-{secrets.token_hex(4)}"
    record: dict[str, Any] = {"args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="ojs-bench-") as tmp:
        daemon = Daemon(prefix, Path(tmp), args.amqp_url)
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=args.concurrency + 4)
            ) as session:
                daemon.start()
                record["machine"] = machine_info(await daemon.wait_healthy(session))
                pid = daemon.pid
                print(f"prefix {prefix}, daemon pid {pid} on {daemon.base}", flush=True)
                await asyncio.sleep(2.0)
                record["rss_idle_kib"] = rss_kib(pid)
                pusher = Pusher(session, daemon.base, "parked")
                await pusher.push(args.warmup, args.concurrency, progress=False)
                await asyncio.sleep(SETTLE_S)
                record["rss_before_kib"] = rss_kib(pid)
                record["store_before_bytes"] = store_bytes(Path(tmp))
                print(
                    f"RSS idle {record['rss_idle_kib'] / 1024:.1f} MiB, after a warm-up of "
                    f"{args.warmup} parked jobs {record['rss_before_kib'] / 1024:.1f} MiB; "
                    f"pushing {args.jobs:,} jobs scheduled {PARK_FOR_MS // 60000} min ahead ...",
                    flush=True,
                )
                pusher.pushed, pusher.started = 0, time.perf_counter()
                seconds = await pusher.push(args.jobs, args.concurrency, progress=True)
                record["push_seconds"] = seconds
                record["rss_end_of_push_kib"] = rss_kib(pid)
                await asyncio.sleep(SETTLE_S)
                record["rss_after_kib"] = rss_kib(pid)
                record["hwm_kib"] = status_kib(pid, "VmHWM")
                await asyncio.sleep(SETTLE_S)
                record["rss_after2_kib"] = rss_kib(pid)
                record["store_after_bytes"] = store_bytes(Path(tmp))
                record["broker_queues"] = await asyncio.to_thread(broker_memory, prefix)
        except BaseException:
            print(f"daemon log tail:\n{daemon.log_tail()}", file=sys.stderr)
            raise
        finally:
            daemon.stop()
            deleted = await delete_topology(args.amqp_url, prefix)
            print(f"cleanup: deleted {deleted[0]} queues and {deleted[1]} exchanges ({prefix}*)")
    return record


def render(r: dict[str, Any]) -> str:
    jobs = r["args"]["jobs"]
    mib = 1024.0
    growth = (r["rss_after2_kib"] - r["rss_before_kib"]) / mib
    growth_mb = growth * 1.048576
    out = [
        "",
        "machine: " + ", ".join(f"{k} {v}" for k, v in r["machine"].items()),
        f"pushed {jobs:,} jobs in {r['push_seconds']:.1f}s "
        f"({jobs / r['push_seconds']:,.0f}/s, concurrency {r['args']['concurrency']})",
        "",
        "daemon VmRSS:",
        f"  idle after start                  {r['rss_idle_kib'] / mib:8.1f} MiB",
        f"  after {r['args']['warmup']:,} warm-up jobs          "
        f"{r['rss_before_kib'] / mib:8.1f} MiB   (baseline)",
        f"  at the end of the push            {r['rss_end_of_push_kib'] / mib:8.1f} MiB",
        f"  {SETTLE_S:.0f} s later                        {r['rss_after_kib'] / mib:8.1f} MiB",
        f"  {2 * SETTLE_S:.0f} s later                       {r['rss_after2_kib'] / mib:8.1f} MiB",
        f"  peak (VmHWM)                      {r['hwm_kib'] / mib:8.1f} MiB",
        f"growth for {jobs:,} parked jobs: {growth:.1f} MiB = {growth_mb:.1f} MB "
        f"({1024 * (r['rss_after2_kib'] - r['rss_before_kib']) / jobs:.0f} bytes/job)   "
        f"target < {TARGET_MB:.0f} MB   {'MET' if growth_mb < TARGET_MB else 'NOT MET'}",
        "",
        f"SQLite store: {r['store_before_bytes'] / 2**20:.1f} MiB -> "
        f"{r['store_after_bytes'] / 2**20:.1f} MiB",
        "RabbitMQ, the run's non-empty queues (messages, queue process memory):",
    ]
    total = 0
    for name, messages, memory in r["broker_queues"]:
        total += memory
        out.append(f"  {name:40} {messages:>8,} msgs {memory / 2**20:8.1f} MiB")
    out.append(f"  {'total':40} {'':>13} {total / 2**20:8.1f} MiB")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="parked jobs (100000)")
    parser.add_argument("--warmup", type=int, default=1000, help="parked before the baseline")
    parser.add_argument("--concurrency", type=int, default=64, help="pushes in flight (64)")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if min(args.jobs, args.concurrency) < 1 or args.warmup < 0:
        parser.error("--jobs and --concurrency must be positive")
    return args


def main() -> int:
    args = parse_args()
    record = asyncio.run(run(args))
    print(render(record))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
