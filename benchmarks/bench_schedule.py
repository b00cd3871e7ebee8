#!/usr/bin/env python
"""Timer accuracy of scheduled jobs: ojs-amqp's delay ladder against a plain NServiceBus ladder.

Both sides run at the same time, for the same spread of delays, on the same broker:

  ojs-amqp   N jobs pushed over HTTP (POST /ojs/v1/jobs, C in flight) with
             options.scheduled_at = an absolute RFC 3339 timestamp with milliseconds, uniformly
             1-60 s after the push; W HTTP workers loop POST /workers/fetch {"count": 10} and
             POST /workers/ack per job. Per job:
               became available = enqueued_at - scheduled_at  (the daemon stamps enqueued_at
                                  when its timer fires and it moves the job to its queue)
               fetched          = started_at - scheduled_at   (the worker's fetch leased it)
             both from the fetched job (the daemon's clock, millisecond precision).
  baseline   "a plain ladder without the exact final hop", declared here with raw aio-pika in
             NServiceBus's design: levels L = 0..6, per level a topic exchange and a quorum queue
             with x-message-ttl 2^L s (at-least-once dead-lettering, reject-publish) that
             dead-letters into the exchange of level L-1 (level 0: the delivery exchange).
             The routing key carries the delay in whole seconds, ROUNDED UP (so never early),
             as binary digits, highest level first, then the destination: "0.1.0.1.1.0.1.final".
             Level L's exchange routes "*...1.#" (bit L set) into its queue and "*...0.#" on to
             level L-1's exchange. Every message is published (confirmed) to the top exchange;
             lateness = arrival at the final queue (this client's clock) - intended time.

The script starts the daemon (its own SQLite store, a random `bench-...` prefix, --test-mode)
and at the end deletes every queue and exchange under that prefix, the baseline's included.

    python benchmarks/bench_schedule.py [--jobs N] [--workers W] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import aiormq
import orjson
from _common import (
    BASE,
    CONNECT_TIMEOUT_S,
    DEFAULT_AMQP_URL,
    BenchError,
    Daemon,
    broker_pid,
    cpu_seconds,
    delete_topology,
    machine_info,
    post_json,
    rabbitmqctl_list,
    run_window,
)

TARGET_P99_MS = 50.0
NSB_LEVELS = 7  # 1, 2, 4, ..., 64 s: enough for 60 s (NServiceBus itself has 28)
NSB_DESTINATION = "final"
DRAIN_GRACE_S = 20.0  # after the last intended time, how long to wait for stragglers


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rfc3339_ms(epoch_ms: int) -> str:
    seconds, millis = divmod(epoch_ms, 1000)
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{millis:03d}Z"
    )


def parse_ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# --- statistics ----------------------------------------------------------------------------


@dataclass
class Lateness:
    label: str
    expected: int
    values: list[int] = field(default_factory=list)

    def pct(self, p: float) -> float:
        """Nearest-rank percentile."""
        ordered = sorted(self.values)
        return float(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)])

    def summary(self) -> dict[str, float]:
        v = self.values
        if not v:
            return {"n": 0, "lost": self.expected}
        return {
            "n": len(v),
            "lost": self.expected - len(v),
            "early": sum(1 for x in v if x < 0),
            "min": float(min(v)),
            "p50": self.pct(50),
            "p90": self.pct(90),
            "p99": self.pct(99),
            "max": float(max(v)),
            "mean": sum(v) / len(v),
        }


# --- ojs-amqp: push scheduled jobs, fetch and ack them -------------------------------------


@dataclass
class DaemonSide:
    session: aiohttp.ClientSession
    base: str
    queue: str
    offsets_ms: list[int]
    available: Lateness
    fetched: Lateness
    scheduled: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    mismatched: int = 0
    last_due_ms: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    push_seconds: float = 0.0

    async def push_all(self, concurrency: int) -> None:
        url = f"{self.base}{BASE}/jobs"

        async def push(i: int) -> None:
            due = now_ms() + self.offsets_ms[i]
            self.last_due_ms = max(self.last_due_ms, due)
            body = {
                "type": "bench.scheduled",
                "args": [{"n": i}],
                "options": {"queue": self.queue, "scheduled_at": rfc3339_ms(due)},
            }
            job = (await post_json(self.session, url, body, 201))["job"]
            if job.get("state") != "scheduled" or parse_ms(job["scheduled_at"]) != due:
                self.mismatched += 1
            self.scheduled[job["id"]] = due

        self.push_seconds = await run_window(concurrency, len(self.offsets_ms), push)

    async def worker(self) -> None:
        fetch_url, ack_url = f"{self.base}{BASE}/workers/fetch", f"{self.base}{BASE}/workers/ack"
        body = {"queues": [self.queue], "count": 10}
        while not self.done.is_set():
            answer = await post_json(self.session, fetch_url, body, 200)
            for job in answer["jobs"]:
                if job["id"] in self.seen:
                    self.duplicates += 1
                    await post_json(self.session, ack_url, {"job_id": job["id"]}, 200)
                    continue
                self.seen.add(job["id"])
                due = parse_ms(job["scheduled_at"])
                self.available.values.append(parse_ms(job["enqueued_at"]) - due)
                self.fetched.values.append(parse_ms(job["started_at"]) - due)
                await post_json(self.session, ack_url, {"job_id": job["id"]}, 200)
                if len(self.fetched.values) >= len(self.offsets_ms):
                    self.done.set()

    async def missing(self) -> list[dict[str, Any]]:
        """What the daemon says about jobs pushed but never fetched."""
        out = []
        for job_id, due in self.scheduled.items():
            if job_id in self.seen:
                continue
            async with self.session.get(f"{self.base}{BASE}/jobs/{job_id}") as resp:
                job = orjson.loads(await resp.read()).get("job", {})
            out.append(
                {
                    "id": job_id,
                    "state": job.get("state"),
                    "scheduled_at": rfc3339_ms(due),
                    "overdue_ms": now_ms() - due,
                    "enqueued_at": job.get("enqueued_at"),
                }
            )
        return out


# --- the baseline: NServiceBus-style routing-key-bits ladder -------------------------------


@dataclass
class NsbLadder:
    prefix: str
    levels: int = NSB_LEVELS

    def exchange(self, level: int) -> str:
        return f"{self.prefix}.nsb.delay-level-{level:02d}"

    def queue(self, level: int) -> str:
        return f"{self.prefix}.nsb.delay-level-{level:02d}"

    @property
    def delivery_exchange(self) -> str:
        return f"{self.prefix}.nsb.delay-delivery"

    @property
    def final_queue(self) -> str:
        return f"{self.prefix}.nsb.final"

    def names(self) -> tuple[list[str], list[str]]:
        queues = [*(self.queue(lv) for lv in range(self.levels)), self.final_queue]
        exchanges = [*(self.exchange(lv) for lv in range(self.levels)), self.delivery_exchange]
        return queues, exchanges

    def routing_key(self, delay_s: int) -> str:
        if not 0 <= delay_s < 1 << self.levels:
            raise BenchError(f"delay {delay_s}s does not fit {self.levels} levels")
        bits = [str((delay_s >> lv) & 1) for lv in reversed(range(self.levels))]
        return ".".join([*bits, NSB_DESTINATION])

    def _pattern(self, level: int, bit: str) -> str:
        return "*." * (self.levels - 1 - level) + bit + ".#"

    async def declare(self, channel: aio_pika.abc.AbstractChannel) -> None:
        topic = aio_pika.ExchangeType.TOPIC
        delivery = await channel.declare_exchange(self.delivery_exchange, topic, durable=True)
        final = await channel.declare_queue(
            self.final_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await final.bind(delivery, f"#.{NSB_DESTINATION}")
        lower = delivery
        for level in range(self.levels):
            exchange = await channel.declare_exchange(self.exchange(level), topic, durable=True)
            queue = await channel.declare_queue(
                self.queue(level),
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": 1000 << level,
                    "x-dead-letter-exchange": lower.name,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            await queue.bind(exchange, self._pattern(level, "1"))
            await lower.bind(exchange, self._pattern(level, "0"))
            lower = exchange


@dataclass
class BaselineSide:
    ladder: NsbLadder
    offsets_ms: list[int]
    arrived: Lateness
    done: asyncio.Event = field(default_factory=asyncio.Event)
    push_seconds: float = 0.0

    async def publish_all(self, conn: aio_pika.abc.AbstractConnection, concurrency: int) -> None:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        top = await channel.get_exchange(self.ladder.exchange(self.ladder.levels - 1))

        async def publish(i: int) -> None:
            now = now_ms()
            due = now + self.offsets_ms[i]
            delay_s = -(-(due - now) // 1000)  # whole seconds, rounded up: never early
            message = aio_pika.Message(
                body=orjson.dumps({"n": i, "due_ms": due}),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            key = self.ladder.routing_key(delay_s)
            confirmation = await top.publish(message, key, mandatory=True, timeout=10.0)
            if not isinstance(confirmation, aiormq.spec.Basic.Ack):
                raise BenchError(f"publish not confirmed: {confirmation!r}")

        self.push_seconds = await run_window(concurrency, len(self.offsets_ms), publish)
        await channel.close()

    async def consume(self, conn: aio_pika.abc.AbstractConnection) -> aio_pika.abc.AbstractQueue:
        channel = await conn.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=256)
        queue = await channel.get_queue(self.ladder.final_queue)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrived = now_ms()
            self.arrived.values.append(arrived - orjson.loads(message.body)["due_ms"])
            await message.ack()
            if len(self.arrived.values) >= len(self.offsets_ms):
                self.done.set()

        await queue.consume(on_message)
        return queue


def queue_depths(prefix: str) -> dict[str, str]:
    """Non-empty queues under the prefix: name -> "ready/unacked"."""
    rows = rabbitmqctl_list("queues", ("name", "messages_ready", "messages_unacknowledged"))
    return {
        r[0]: f"{r[1]}/{r[2]}"
        for r in rows
        if r[0].startswith(prefix) and len(r) == 3 and (r[1], r[2]) != ("0", "0")
    }


# --- the run -------------------------------------------------------------------------------


@dataclass
class Result:
    info: dict[str, str]
    rows: list[Lateness]
    notes: dict[str, Any]


async def run(args: argparse.Namespace) -> Result:
    tag = secrets.token_hex(4)
    prefix = f"bench-{tag}"
    rng = random.Random(args.seed)
    lo, hi = round(args.min_delay * 1000), round(args.max_delay * 1000)
    offsets = [rng.randint(lo, hi) for _ in range(args.jobs)]
    ladder = NsbLadder(prefix)
    available = Lateness("ojs-amqp became available", args.jobs)
    fetched = Lateness("ojs-amqp fetched", args.jobs)
    baseline = Lateness("plain ladder (NSB bits)", args.jobs)
    notes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ojs-bench-") as tmp:
        daemon = Daemon(prefix, Path(tmp), args.amqp_url)
        conn: aio_pika.abc.AbstractConnection | None = None
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=args.concurrency + args.workers + 4)
            ) as session:
                daemon.start()
                info = machine_info(await daemon.wait_healthy(session))
                print(f"prefix {prefix}, daemon pid {daemon.pid} on {daemon.base}", flush=True)
                conn = await aio_pika.connect(args.amqp_url, timeout=CONNECT_TIMEOUT_S)
                setup = await conn.channel()
                await ladder.declare(setup)
                await setup.close()
                ours = DaemonSide(session, daemon.base, f"sched-{tag}", offsets, available, fetched)
                theirs = BaselineSide(ladder, offsets, baseline)
                await theirs.consume(conn)
                workers = [asyncio.create_task(ours.worker()) for _ in range(args.workers)]
                broker = broker_pid()
                cpu0 = (cpu_seconds(daemon.pid), cpu_seconds(broker) if broker else 0.0)
                t0 = time.perf_counter()
                print(f"pushing {args.jobs} jobs to each side ...", flush=True)
                await asyncio.gather(
                    ours.push_all(args.concurrency), theirs.publish_all(conn, args.concurrency)
                )
                print(
                    f"  pushed in {ours.push_seconds:.1f}s (daemon) and "
                    f"{theirs.push_seconds:.1f}s (baseline); waiting for the timers ...",
                    flush=True,
                )
                wait_s = (ours.last_due_ms - now_ms()) / 1000 + DRAIN_GRACE_S
                try:
                    async with asyncio.timeout(wait_s):
                        await asyncio.gather(ours.done.wait(), theirs.done.wait())
                except TimeoutError:
                    print("  (timed out waiting: some deliveries are missing)", flush=True)
                ours.done.set()
                missing = await ours.missing()
                if missing:
                    print(f"  {len(missing)} jobs never fetched: {missing[:10]}", flush=True)
                    print(f"  queues: {await asyncio.to_thread(queue_depths, prefix)}", flush=True)
                    print(f"  daemon log tail:\n{daemon.log_tail()}", flush=True)
                elapsed = time.perf_counter() - t0
                await asyncio.wait(workers, timeout=5.0)
                for task in workers:
                    task.cancel()
                notes = {
                    "window_s": round(elapsed, 1),
                    "push_s": round(ours.push_seconds, 2),
                    "mismatched_scheduled_at": ours.mismatched,
                    "duplicates": ours.duplicates,
                    "never_fetched": len(missing),
                    "daemon_cpu_pct": round(100 * (cpu_seconds(daemon.pid) - cpu0[0]) / elapsed),
                }
                if broker:
                    used = cpu_seconds(broker) - cpu0[1]
                    notes["broker_cpu_pct"] = round(100 * used / elapsed)
        except BaseException:
            print(f"daemon log tail:\n{daemon.log_tail()}", file=sys.stderr)
            raise
        finally:
            if conn is not None:
                await conn.close()
            daemon.stop()
            queues, exchanges = ladder.names()
            deleted = await delete_topology(args.amqp_url, prefix, queues, exchanges)
            print(f"cleanup: deleted {deleted[0]} queues and {deleted[1]} exchanges ({prefix}*)")
    return Result(info, [available, fetched, baseline], notes)


def render(result: Result, args: argparse.Namespace) -> str:
    out = [
        "",
        "machine: " + ", ".join(f"{k} {v}" for k, v in result.info.items()),
        f"{args.jobs} timers per side, delays uniform {args.min_delay:g}-{args.max_delay:g} s, "
        f"push concurrency {args.concurrency}, {args.workers} HTTP workers (fetch count=10)",
        "run: " + ", ".join(f"{k} {v}" for k, v in result.notes.items()),
        "",
        "lateness in ms (negative = early)",
    ]
    summaries = [row.summary() for row in result.rows]
    head = f"{'':10}" + "".join(f"{row.label:>29}" for row in result.rows)
    out += [head, "-" * len(head)]
    for key in ("n", "lost", "early", "min", "p50", "p90", "p99", "max", "mean"):
        cells = []
        for s in summaries:
            value = s.get(key)
            cells.append("-" if value is None else f"{value:,.0f}")
        out.append(f"{key:10}" + "".join(f"{c:>29}" for c in cells))
    out.append("")
    avail = summaries[0]
    if avail.get("n"):
        early_ok = avail["early"] == 0 and avail["lost"] == 0
        p99_ok = avail["p99"] <= TARGET_P99_MS
        out.append(
            f"target zero early (became available): {avail['early']:.0f} early, "
            f"{avail['lost']:.0f} lost   {'MET' if early_ok else 'NOT MET'}"
        )
        out.append(
            f"target p99 <= {TARGET_P99_MS:.0f} ms (became available): {avail['p99']:.0f} ms   "
            f"{'MET' if p99_ok else 'NOT MET'}"
        )
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="timers per side (1000)")
    parser.add_argument("--min-delay", type=float, default=1.0, help="seconds (1)")
    parser.add_argument("--max-delay", type=float, default=60.0, help="seconds (60)")
    parser.add_argument("--concurrency", type=int, default=16, help="pushes in flight (16)")
    parser.add_argument("--workers", type=int, default=4, help="HTTP fetch+ack loops (4)")
    parser.add_argument("--seed", type=int, default=None, help="for the delays (random)")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if min(args.jobs, args.concurrency, args.workers) < 1:
        parser.error("--jobs, --concurrency and --workers must be positive")
    if not 0 < args.min_delay <= args.max_delay < (1 << NSB_LEVELS) - 1:
        parser.error(f"need 0 < --min-delay <= --max-delay < {(1 << NSB_LEVELS) - 1}")
    return args


def main() -> int:
    args = parse_args()
    result = asyncio.run(run(args))
    print(render(result, args))
    if args.json:
        record = {
            "machine": result.info,
            "args": vars(args),
            "notes": result.notes,
            "lateness_ms": {row.label: row.summary() for row in result.rows},
        }
        Path(args.json).write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
