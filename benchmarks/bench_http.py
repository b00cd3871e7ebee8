#!/usr/bin/env python
"""HTTP-binding throughput of ojs-amqp against raw aio-pika on the same RabbitMQ, in one run.

Phases (each after a short warm-up):
  (a) raw confirmed publish: persistent ~300-byte JSON messages to a durable quorum queue,
      publisher confirms, mandatory, C publishes in flight on one channel (what the daemon's
      publish path does per job);
  (b) raw consume + ack of those messages (manual ack per message, prefetch 256);
  (c) HTTP push: POST /ojs/v1/jobs from C concurrent keep-alive aiohttp requests;
  (d) HTTP fetch+ack: C workers loop POST /workers/fetch then POST /workers/ack per job,
      draining what (c) pushed, with count=1 and with count=10 per fetch.

With --client wrk, (c) and (d) are driven by wrk (Debian's package) for fixed windows instead:
benchmarks/wrk_push.lua and benchmarks/wrk_fetch_ack.lua (one connection a wrk thread, so a
connection acks what it fetched), each phase checked against the daemon's store (benchmarks/
_wrk.py); a non-2xx answer or a count the store disagrees with fails the run. Every phase also
reports the machine's busy cores, CPU steal and load (from /proc), so a noisy run shows.

The script starts the daemon itself (a subprocess with a random topology prefix and its own
SQLite store), and at the end stops it and deletes every queue and exchange under that prefix
together with the baseline's own queue and exchange. --runs N repeats the whole sequence, each
on a fresh daemon, and prints every run and the median; --smoke is a fast self-check.

    python benchmarks/bench_http.py [--client lean|aiohttp|wrk] [--jobs N] [--concurrency C]
        [--seconds S] [--fetch-seconds S] [--runs N] [--smoke] [--profile DIR] [--json OUT]

With --profile DIR, py-spy samples the daemon during the HTTP phases (raw collapsed stacks in
DIR/<phase>.txt) and a summary of the top costs is printed; rates of a profiled run are a few
per cent lower, so take the headline figures from runs without it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
from _common import (
    JSON_HEADERS,
    BenchError,
    Daemon,
    machine_cpu_ticks,
    machine_info,
    machine_load,
)
from _common import broker_pid as _broker_pid
from _common import cpu_seconds as _cpu_seconds
from _common import delete_topology as _delete_topology
from _http_load import Post, aiohttp_poster, http_drain, http_push
from _http_report import Phase, median_json, render, render_median
from _lean_http import LeanSession
from _profile import Profiler, summarize_profile
from _raw_baseline import RAW_PREFETCH, RawNames, raw_consume, raw_declare, raw_publish
from _wrk import (
    FETCH_SCRIPT,
    PUSH_SCRIPT,
    PostStatus,
    StoreReader,
    WrkOutcome,
    check_push,
    run_wrk,
    settle_fetch,
    wrk_available,
)

# --- measurement helpers -----------------------------------------------------------------


def _runq_seconds(pid: int) -> float:
    """Time the process's main thread spent runnable but waiting for a CPU (schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuMeter:
    """CPU seconds spent by the daemon, the broker and the client between two points."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {"client": os.getpid()}
        broker = _broker_pid()
        if broker is not None:
            self.pids["broker"] = broker

    def snapshot(self) -> dict[str, float]:
        out = {who: _cpu_seconds(pid) for who, pid in self.pids.items()}
        # The load generator: this process plus its finished children (a wrk run).
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["client"] += children.ru_utime + children.ru_stime
        if "daemon" in self.pids:
            out["daemon_runq"] = _runq_seconds(self.pids["daemon"])
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """A process whose counter went backwards (a beam.smp of a test node that stopped:
        the broker pid is found by name) is left out rather than reported negative."""
        return {
            who: after[who] - before[who]
            for who in after
            if who in before and after[who] >= before[who]
        }


async def delete_topology(
    amqp_url: str, prefix: str, raw: RawNames, use_rabbitmqctl: bool = True
) -> tuple[int, int]:
    """Delete every queue/exchange named `prefix...`, and the baseline's own; the counts."""
    return await _delete_topology(amqp_url, prefix, [raw.queue], [raw.exchange], use_rabbitmqctl)


# --- the run -------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    daemon: Daemon
    raw: RawNames
    meter: CpuMeter
    phases: dict[str, Phase] = field(default_factory=dict)

    async def measure(
        self, key: str, label: str, count: int, run: Awaitable[float | WrkOutcome]
    ) -> None:
        """Time `run` (its own seconds, or wrk's outcome) with the CPU and machine around it."""
        before, ticks, start = self.meter.snapshot(), machine_cpu_ticks(), time.perf_counter()
        outcome = await run
        wall = time.perf_counter() - start
        cpu = CpuMeter.delta(before, self.meter.snapshot())
        machine = machine_load(ticks, machine_cpu_ticks(), wall)
        note = ""
        if isinstance(outcome, WrkOutcome):
            count, seconds, note = outcome.count, outcome.seconds, outcome.note
        else:
            seconds = outcome
        self.phases[key] = Phase(key, label, count, seconds, cpu, machine, wall, note)
        print(
            f"  {label}: {count / seconds:,.0f}/s ({seconds:.2f}s, steal "
            f"{machine['steal_pct']:.1f}%, load {machine['load1']:.1f})",
            flush=True,
        )

    async def baselines(self, rnd: int) -> None:
        """Round `rnd` of (a) then (b); run before and after the HTTP phases."""
        a = self.args
        pub = await aio_pika.connect(a.amqp_url)
        con = await aio_pika.connect(a.amqp_url)
        try:
            await raw_declare(pub, self.raw)
            await raw_publish(pub, self.raw, a.warmup, a.concurrency, offset=a.raw_jobs)
            await self.measure(
                f"a#{rnd}",
                f"(a) raw confirmed publish, quorum #{rnd}",
                a.raw_jobs,
                raw_publish(pub, self.raw, a.raw_jobs, a.concurrency),
            )
            await asyncio.sleep(1.0)
            await self.measure(
                f"b#{rnd}",
                f"(b) raw consume+ack, quorum, pf {RAW_PREFETCH} #{rnd}",
                a.raw_jobs,
                raw_consume(con, self.raw, a.warmup, a.raw_jobs),
            )
        finally:
            await con.close()
            await pub.close()

    def best_baselines(self) -> None:
        """(a) and (b) are the faster of their two rounds: a round slowed by something else
        on the machine says nothing about the broker, and the higher baseline is the stricter
        one for the ratios."""
        for key in ("a", "b"):
            rounds = [p for k, p in self.phases.items() if k.startswith(key + "#")]
            best = max(rounds, key=lambda p: p.rate)
            label = best.label.rsplit(" #", 1)[0] + " (best)"
            self.phases[key] = dataclasses.replace(best, key=key, label=label)

    async def http(self, post: Post, profiler: Profiler) -> None:
        a, tag = self.args, secrets.token_hex(3)
        q1, q10 = f"c1-{tag}", f"c10-{tag}"
        # Warm-up on queues of their own: every endpoint, both fetch sizes.
        for count in (1, 10):
            await http_push(post, f"warm{count}-{tag}", a.warmup, a.concurrency)
        await asyncio.sleep(1.2)  # past the daemon's 1 s "expected delivery" window
        for count in (1, 10):
            await http_drain(post, f"warm{count}-{tag}", a.warmup, a.concurrency, count)
        async with profiler.phase("push"):
            await self.measure(
                "c1",
                "(c) HTTP push, queue for count=1",
                a.jobs,
                http_push(post, q1, a.jobs, a.concurrency),
            )
            await self.measure(
                "c10",
                "(c) HTTP push, queue for count=10",
                a.jobs,
                http_push(post, q10, a.jobs, a.concurrency),
            )
        self.combine_push(2 * a.jobs)
        await asyncio.sleep(1.2)
        for key, label, queue, count in (
            ("d1", "(d) HTTP fetch(count=1) + ack", q1, 1),
            ("d10", "(d) HTTP fetch(count=10) + ack each", q10, 10),
        ):
            # The first fetch on a queue opens the daemon's gateway (a consumer, and a wait
            # of up to 0.5 s for its first prefetch burst): one job is fetched and acked
            # before the clock starts, so the phase measures the steady fetch+ack cycle.
            await http_drain(post, queue, 1, 1, 1)
            async with profiler.phase(f"fetch{count}"):
                await self.measure(
                    key,
                    label,
                    a.jobs - 1,
                    http_drain(post, queue, a.jobs - 1, a.concurrency, count),
                )

    def combine_push(self, count: int) -> None:
        """(c) is the two push phases together: their counts, seconds, CPU and machine."""
        one, two = self.phases["c1"], self.phases["c10"]
        wall = one.wall + two.wall
        machine = {
            k: (one.machine[k] * one.wall + two.machine[k] * two.wall) / wall for k in one.machine
        }
        machine["load1"] = two.machine["load1"]
        cpu = {k: one.cpu[k] + two.cpu[k] for k in one.cpu if k in two.cpu}
        label = "(c) HTTP push POST /jobs (both queues)"
        self.phases["c"] = Phase("c", label, count, one.seconds + two.seconds, cpu, machine, wall)

    async def http_wrk(self, post: Post, status_post: PostStatus, profiler: Profiler) -> None:
        """(c) and (d) driven by wrk for fixed windows, each checked against the store."""
        a, tag = self.args, secrets.token_hex(3)
        q1, q10 = f"c1-{tag}", f"c10-{tag}"
        store = StoreReader(self.daemon.workdir / "bench.db")
        base = self.daemon.base

        async def push(queue: str) -> WrkOutcome:
            record = await run_wrk(
                base, PUSH_SCRIPT, a.seconds, a.concurrency, a.wrk_threads, queue
            )
            records[queue] = record
            return WrkOutcome(record["statuses"].get("201", 0), record["duration_us"] / 1e6, "")

        async def fetch(queue: str, count: int) -> WrkOutcome:
            c = a.concurrency  # one connection a thread: a connection acks what it fetched
            record = await run_wrk(base, FETCH_SCRIPT, a.fetch_seconds, c, c, queue, str(count))
            record["count"] = count
            records[queue] = record
            return WrkOutcome(record["acked"], record["duration_us"] / 1e6, "")

        records: dict[str, dict[str, Any]] = {}
        for count in (1, 10):  # warm-up, as in the other modes
            await http_push(post, f"warm{count}-{tag}", a.warmup, a.concurrency)
        await asyncio.sleep(1.2)
        for count in (1, 10):
            await http_drain(post, f"warm{count}-{tag}", a.warmup, a.concurrency, count)
        async with profiler.phase("push"):
            for key, queue in (("c1", q1), ("c10", q10)):
                await self.measure(key, f"(c) HTTP push (wrk), queue {key}", 0, push(queue))
                await asyncio.sleep(0.5)  # the pushes in flight at wrk's stop land
                self.phases[key].note = check_push(records[queue], store, queue).note
        self.combine_push(self.phases["c1"].count + self.phases["c10"].count)
        await asyncio.sleep(1.2)
        for key, label, queue, count in (
            ("d1", "(d) HTTP fetch(1) + ack (wrk)", q1, 1),
            ("d10", "(d) HTTP fetch(10) + ack each (wrk)", q10, 10),
        ):
            await http_drain(post, queue, 1, 1, 1)  # opens the gateway, untimed (see http())
            completed = store.states(queue).get("completed", 0)
            async with profiler.phase(f"fetch{count}"):
                await self.measure(key, label, 0, fetch(queue, count))
            await asyncio.sleep(0.5)
            outcome = await settle_fetch(records[queue], store, queue, completed, status_post)
            self.phases[key].note = outcome.note
        if a.smoke:
            await self.refusals_fail(store)

    async def refusals_fail(self, store: StoreReader) -> None:
        """--smoke: a wrk run whose answers are 4xx must fail the check, not count."""
        bad_queue = "Not_A_Queue"  # upper case and "_": the daemon answers 400
        record = await run_wrk(self.daemon.base, PUSH_SCRIPT, 1, 4, 1, bad_queue)
        try:
            check_push(record, store, bad_queue)
        except BenchError as exc:
            print(f"  smoke: a wrk push answered 4xx fails the check, as it must: {exc}")
            return
        raise BenchError(f"smoke: a wrk push answered non-2xx passed the check: {record}")


def status_poster(session: aiohttp.ClientSession, base: str) -> PostStatus:
    async def post(path: str, body: Any) -> tuple[int, Any]:
        async with session.post(base + path, data=orjson.dumps(body), headers=JSON_HEADERS) as r:
            return r.status, orjson.loads(await r.read())

    return post


async def run_once(args: argparse.Namespace) -> tuple[dict[str, Phase], dict[str, str]]:
    """The whole sequence on a fresh daemon: baselines, HTTP phases, baselines again."""
    prefix = f"bench-{secrets.token_hex(4)}"
    raw = RawNames(exchange=f"{prefix}.raw.exchange", queue=f"{prefix}.raw.queue")
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ojs-bench-") as tmp:
        daemon = Daemon(prefix, Path(tmp), args.amqp_url)
        connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                daemon.start()
                health = await daemon.wait_healthy(session)
                meter = CpuMeter()
                meter.pids["daemon"] = daemon.pid
                info = machine_info(health)
                print(f"prefix {prefix}, daemon pid {daemon.pid} on {daemon.base}")
                bench = Bench(args, daemon, raw, meter)
                profiler = Profiler(daemon.pid, profile_dir)
                await bench.baselines(1)
                await _http_phases(args, bench, session, profiler)
                await bench.baselines(2)
                bench.best_baselines()
        except BaseException:
            print(f"daemon log tail:\n{daemon.log_tail()}", file=sys.stderr)
            raise
        finally:
            daemon.stop()
            deleted = await delete_topology(args.amqp_url, prefix, raw)
            print(f"cleanup: deleted {deleted[0]} queues and {deleted[1]} exchanges ({prefix}*)")
    return bench.phases, info


async def _http_phases(
    args: argparse.Namespace, bench: Bench, session: aiohttp.ClientSession, profiler: Profiler
) -> None:
    base = bench.daemon.base
    if args.client == "aiohttp":
        await bench.http(aiohttp_poster(session, base), profiler)
        return
    lean = LeanSession("127.0.0.1", bench.daemon.port)
    try:
        if args.client == "wrk":
            await bench.http_wrk(lean.post_json, status_poster(session, base), profiler)
        else:
            await bench.http(lean.post_json, profiler)
    finally:
        await lean.close()


def report(runs: list[tuple[dict[str, Phase], dict[str, str]]], args: argparse.Namespace) -> None:
    for n, (phases, info) in enumerate(runs, 1):
        print(f"\n=== run {n} of {len(runs)} ===" + render(phases, info, args))
    if len(runs) > 1:
        print(render_median([phases for phases, _ in runs]))
    if args.profile:
        for path in sorted(Path(args.profile).glob("*.txt")):
            print("\n" + summarize_profile(path))
    if args.json:
        as_json = [{k: p.as_json() for k, p in phases.items()} for phases, _ in runs]
        record = {
            "machine": runs[0][1],
            "args": vars(args),
            "phases": as_json[0],
            "runs": as_json,
            "median_ratios": median_json([phases for phases, _ in runs]),
        }
        Path(args.json).write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--jobs", type=int, default=10000, help="jobs per HTTP phase (default 10000)")
    add("--concurrency", type=int, default=64, help="requests in flight / wrk connections (64)")
    add("--raw-jobs", type=int, default=None, help="raw-phase messages (default 4 x --jobs)")
    add("--warmup", type=int, default=500, help="warm-up operations per phase")
    add("--amqp-url", default=os.environ.get("OJS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    add(
        "--client",
        choices=("lean", "aiohttp", "wrk"),
        default="lean",
        help="HTTP load generator: a minimal keep-alive client (default), aiohttp's, or wrk",
    )
    add("--seconds", type=int, default=10, help="wrk: the push window per queue (10 s)")
    add("--fetch-seconds", type=int, default=None, help="wrk: each fetch window (--seconds / 2)")
    add("--wrk-threads", type=int, default=2, help="wrk: threads for push (fetch: one a conn.)")
    add("--runs", type=int, default=1, help="repeat the whole sequence; print each and the median")
    add("--smoke", action="store_true", help="a fast self-check: few jobs, short windows")
    add("--profile", metavar="DIR", help="py-spy the daemon's HTTP phases")
    add("--json", metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.smoke:
        args.jobs, args.warmup, args.seconds = 300, 50, 2
        args.raw_jobs = args.raw_jobs or 2000
    if args.raw_jobs is None:
        args.raw_jobs = 4 * args.jobs
    if args.fetch_seconds is None:
        args.fetch_seconds = max(1, args.seconds // 2)
    sizes = (args.jobs, args.concurrency, args.raw_jobs, args.warmup, args.seconds, args.runs)
    if min(*sizes, args.fetch_seconds, args.wrk_threads) < 1:
        parser.error("every count, size and window must be positive")
    if args.client == "wrk" and not wrk_available():
        parser.error("--client wrk needs wrk on PATH (Debian: apt-get install -y wrk)")
    args.load = (
        f"wrk: push {args.seconds}s per queue, fetch {args.fetch_seconds}s per phase"
        if args.client == "wrk"
        else f"jobs {args.jobs} per HTTP phase"
    )
    return args


async def main_async(args: argparse.Namespace) -> list[tuple[dict[str, Phase], dict[str, str]]]:
    runs = []
    for n in range(1, args.runs + 1):
        print(f"--- run {n} of {args.runs}", flush=True)
        runs.append(await run_once(args))
    return runs


def main() -> int:
    args = parse_args()
    report(asyncio.run(main_async(args)), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
