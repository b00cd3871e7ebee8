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

The script starts the daemon itself (a subprocess with a random topology prefix and its own
SQLite store), and at the end stops it and deletes every queue and exchange under that prefix
together with the baseline's own queue and exchange.

    python benchmarks/bench_http.py [--jobs N] [--concurrency C] [--profile DIR] [--json OUT]

With --profile DIR, py-spy samples the daemon during the HTTP phases (raw collapsed stacks in
DIR/<phase>.txt) and a summary of the top costs is printed; rates of a profiled run are a few
per cent lower, so take the headline figures from runs without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import aiormq
import orjson
from _common import (
    BASE,
    BenchError,
    Daemon,
    machine_info,
    post_json,
    run_window,
)
from _common import broker_pid as _broker_pid
from _common import cpu_seconds as _cpu_seconds
from _common import delete_topology as _delete_topology
from _lean_http import LeanSession

TARGET_PUSH = 0.5
TARGET_FETCH = 0.4
RAW_PREFETCH = 256
ROW_ORDER = ["a#1", "a#2", "a", "b#1", "b#2", "b", "c1", "c10", "c", "d1", "d10"]
PHASE_TIMEOUT_S = 300.0


# --- measurement helpers -----------------------------------------------------------------


def _runq_seconds(pid: int) -> float:
    """Time the process's main thread spent runnable but waiting for a CPU (schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Phase:
    key: str
    label: str
    count: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def cpu_percent(self, who: str) -> float | None:
        used = self.cpu.get(who)
        return None if used is None else 100.0 * used / self.seconds


class CpuMeter:
    """CPU seconds spent by the daemon, the broker and this client between two points."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {"client": os.getpid()}
        broker = _broker_pid()
        if broker is not None:
            self.pids["broker"] = broker

    def snapshot(self) -> dict[str, float]:
        out = {who: _cpu_seconds(pid) for who, pid in self.pids.items()}
        if "daemon" in self.pids:
            out["daemon_runq"] = _runq_seconds(self.pids["daemon"])
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {who: after[who] - before[who] for who in after if who in before}


def payload(i: int) -> dict[str, Any]:
    """The job arguments: with the envelope around them, about 300 bytes of JSON."""
    return {"n": i, "customer": f"cust-{i % 997:04d}", "action": "bench.noop", "note": "x" * 180}


def raw_body(i: int, queue: str) -> bytes:
    return orjson.dumps({"type": "bench.noop", "queue": queue, "args": [payload(i)]})


# --- (a) and (b): raw aio-pika baselines ---------------------------------------------------


@dataclass
class RawNames:
    exchange: str
    queue: str


async def raw_declare(conn: aio_pika.abc.AbstractConnection, names: RawNames) -> None:
    channel = await conn.channel(publisher_confirms=False)
    exchange = await channel.declare_exchange(
        names.exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    queue = await channel.declare_queue(
        names.queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.bind(exchange, "bench")
    await channel.close()


async def raw_publish(
    conn: aio_pika.abc.AbstractConnection,
    names: RawNames,
    total: int,
    concurrency: int,
    offset: int = 0,
) -> float:
    """Confirmed, mandatory, persistent publishes, `concurrency` in flight on one channel."""
    channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(names.exchange, ensure=False)

    async def publish(i: int) -> None:
        message = aio_pika.Message(
            body=raw_body(offset + i, names.queue),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(offset + i),
        )
        confirmation = await exchange.publish(message, "bench", mandatory=True, timeout=10.0)
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise BenchError(f"publish not confirmed: {confirmation!r}")

    seconds = await run_window(concurrency, total, publish, timeout_s=PHASE_TIMEOUT_S)
    await channel.close()
    return seconds


async def raw_consume(
    conn: aio_pika.abc.AbstractConnection, names: RawNames, warmup: int, total: int
) -> float:
    """Consume warmup + total messages with a manual ack each; time the last `total`."""
    channel = await conn.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=RAW_PREFETCH)
    queue = await channel.get_queue(names.queue, ensure=False)
    seen = 0
    start = time.perf_counter()
    end = start
    done = asyncio.Event()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal seen, start, end
        await message.ack()
        seen += 1
        if seen == warmup:
            start = time.perf_counter()
        elif seen == warmup + total:
            end = time.perf_counter()
            done.set()

    tag = await queue.consume(on_message, no_ack=False)
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        await done.wait()
    await queue.cancel(tag)
    await channel.close()
    return end - start


# --- (c) and (d): through the daemon -------------------------------------------------------


#: POST path, JSON body, expected status -> the answer's JSON (aiohttp or the lean client).
Post = Callable[[str, Any, int], Awaitable[Any]]


def aiohttp_poster(session: aiohttp.ClientSession, base: str) -> Post:
    async def post(path: str, body: Any, expect: int) -> Any:
        return await post_json(session, base + path, body, expect)

    return post


async def http_push(post: Post, queue: str, total: int, concurrency: int) -> float:
    url = f"{BASE}/jobs"

    async def push(i: int) -> None:
        body = {"type": "bench.noop", "args": [payload(i)], "options": {"queue": queue}}
        await post(url, body, 201)

    return await run_window(concurrency, total, push, timeout_s=PHASE_TIMEOUT_S)


async def http_drain(post: Post, queue: str, total: int, concurrency: int, count: int) -> float:
    """C workers fetch (`count` per call) and ack each job until `total` jobs are acked.

    The clock stops at the last ack; workers then still parked in an empty fetch (the daemon
    holds those up to its fetch wait) finish untimed.
    """
    fetch_url, ack_url = f"{BASE}/workers/fetch", f"{BASE}/workers/ack"
    fetch_body = {"queues": [queue], "count": count}
    acked = 0
    end = 0.0
    finished = asyncio.Event()

    async def worker() -> None:
        nonlocal acked, end
        while not finished.is_set():
            answer = await post(fetch_url, fetch_body, 200)
            for job in answer["jobs"]:
                await post(ack_url, {"job_id": job["id"]}, 200)
                acked += 1
                if acked >= total and not finished.is_set():
                    end = time.perf_counter()
                    finished.set()

    start = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return end - start


async def delete_topology(
    amqp_url: str, prefix: str, raw: RawNames, use_rabbitmqctl: bool = True
) -> tuple[int, int]:
    """Delete every queue/exchange named `prefix...`, and the baseline's own; the counts."""
    return await _delete_topology(amqp_url, prefix, [raw.queue], [raw.exchange], use_rabbitmqctl)


# --- profiling (py-spy) --------------------------------------------------------------------


class Profiler:
    """py-spy sampling the daemon during a phase, raw collapsed stacks to DIR/<phase>.txt."""

    def __init__(self, pid: int, outdir: Path | None) -> None:
        self.pid = pid
        self.outdir = outdir
        self.files: dict[str, Path] = {}
        self._proc: asyncio.subprocess.Process | None = None

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> Any:
        if self.outdir is None:
            yield
            return
        path = self.outdir / f"{name}.txt"
        cmd = [
            "py-spy",
            "record",
            "--pid",
            str(self.pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--nonblocking",
            "--idle",
            "--output",
            str(path),
        ]
        self._proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await asyncio.sleep(1.0)  # py-spy attaches before the clock starts
        try:
            yield
        finally:
            self._proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(60):
                await self._proc.wait()
            self.files[name] = path


def _frames(stack: str) -> list[str]:
    """'f (pkg/file.py:12);g (x.py:3)' -> ['f (pkg/file.py)', 'g (x.py)'], outermost first."""
    out = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        out.append(f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})")
    return out


#: Leaf frame -> cost centre; first match wins. py-spy shows C calls (sqlite3, send(),
#: orjson) as the Python line that made them, so "store" is mostly time inside SQLite.
_CATEGORIES = (
    ("(selectors.py)", "idle (waiting in epoll)"),
    ("_SelectorSocketTransport.write ", "socket send() syscalls (HTTP + AMQP writes)"),
    ("ojs_amqp/store/", "ojs_amqp.store (SQLite statements, row (de)serialisation)"),
    ("ojs_amqp/core/times.py", "ojs_amqp.core.times.format_ms (strftime)"),
    ("ojs_amqp/", "ojs_amqp, other (engine, core, codec, http handlers)"),
    ("aiohttp/", "aiohttp (HTTP server)"),
    ("aio_pika/", "aio-pika / aiormq / pamqp (AMQP client)"),
    ("aiormq/", "aio-pika / aiormq / pamqp (AMQP client)"),
    ("pamqp/", "aio-pika / aiormq / pamqp (AMQP client)"),
    ("pydantic", "pydantic (validation)"),
    ("prometheus_client/", "prometheus_client (metrics)"),
    ("asyncio/", "asyncio (event loop, tasks, futures)"),
)


def _category(frame: str) -> str:
    for needle, label in _CATEGORIES:
        if needle in frame:
            return label
    return "other (stdlib: dataclasses, enum, datetime, ...)"


def _read_collapsed(path: Path) -> Iterator[tuple[list[str], int]]:
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield _frames(stack), int(count)


def summarize_profile(path: Path, top: int = 18) -> str:
    """Leaf (self) time by category and by function, and inclusive time by function."""
    self_cat: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    total = 0
    for frames, count in _read_collapsed(path):
        total += count
        leaf = frames[-1]
        self_cat[_category(leaf)] += count
        self_fn[leaf] += count
        if "(selectors.py)" not in leaf:
            for frame in set(frames):
                incl_fn[frame] += count
    if not total:
        return f"{path.name}: no samples"
    idle = self_cat.pop(_CATEGORIES[0][1], 0)
    busy = max(1, total - idle)
    lines = [
        f"{path.name}: {total} samples, idle in epoll {100 * idle / total:.1f}% (includes"
        " py-spy's 1 s attach and the phase's tail); below: % of the busy samples",
        "  self time by category:",
    ]
    lines += [f"    {100 * n / busy:5.1f}%  {cat}" for cat, n in self_cat.most_common()]
    lines.append("  self time, top functions:")
    top_self = [(fn, n) for fn, n in self_fn.most_common(top + 1) if "(selectors.py)" not in fn]
    lines += [f"    {100 * n / busy:5.1f}%  {fn}" for fn, n in top_self[:top]]
    lines.append("  inclusive time, top functions (ojs_amqp, aiohttp web, aio-pika):")
    interesting = [(fn, n) for fn, n in incl_fn.most_common() if _is_interesting(fn)]
    lines += [f"    {100 * n / busy:5.1f}%  {fn}" for fn, n in interesting[:top]]
    return "\n".join(lines)


def _is_interesting(frame: str) -> bool:
    return any(
        k in frame
        for k in (
            "ojs_amqp/",
            "engine/",
            "store/",
            "http/",
            "aiohttp/web",
            "aio_pika/",
            "aiormq/",
            "core/",
        )
    )


# --- reporting -----------------------------------------------------------------------------


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def render(phases: dict[str, Phase], info: dict[str, str], args: argparse.Namespace) -> str:
    out = [
        "",
        "machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        f"jobs {args.jobs} per HTTP phase, raw messages {args.raw_jobs}, concurrency "
        f"{args.concurrency}, warm-up {args.warmup}",
        "",
    ]
    head = (
        f"{'phase':44} {'count':>6} {'sec':>6} {'rate/s':>8} {'daemon':>7} "
        f"{'broker':>7} {'client':>7} {'d.runq':>7} {'daemon CPU/job':>15}"
    )
    out += [head, "-" * len(head)]
    for p in sorted(phases.values(), key=lambda p: ROW_ORDER.index(p.key)):
        daemon = p.cpu.get("daemon")
        per_job = "-" if daemon is None or p.key[0] in "ab" else f"{1e6 * daemon / p.count:.0f} us"
        out.append(
            f"{p.label:44} {p.count:>6} {p.seconds:>6.2f} {p.rate:>8.0f} "
            f"{_fmt_pct(p.cpu_percent('daemon')):>7} {_fmt_pct(p.cpu_percent('broker')):>7} "
            f"{_fmt_pct(p.cpu_percent('client')):>7} "
            f"{_fmt_pct(p.cpu_percent('daemon_runq')):>7} {per_job:>15}"
        )
    out.append(
        "(daemon/broker/client: CPU used during the phase, % of one core; d.runq: % of the"
        " phase the daemon's event loop was runnable but waiting for a CPU)"
    )
    out.append("")
    for num, den, target in (
        ("c", "a", TARGET_PUSH),
        ("d1", "b", TARGET_FETCH),
        ("d10", "b", TARGET_FETCH),
    ):
        ratio = phases[num].rate / phases[den].rate
        verdict = "MET" if ratio >= target else "NOT MET"
        out.append(f"ratio ({num})/({den}) = {ratio:.3f}   target {target:.2f}   {verdict}")
    return "\n".join(out)


# --- the run -------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    daemon: Daemon
    raw: RawNames
    meter: CpuMeter
    phases: dict[str, Phase] = field(default_factory=dict)

    async def measure(self, key: str, label: str, count: int, run: Awaitable[float]) -> None:
        before = self.meter.snapshot()
        seconds = await run
        cpu = CpuMeter.delta(before, self.meter.snapshot())
        self.phases[key] = Phase(key, label, count, seconds, cpu)
        print(f"  {label}: {count / seconds:,.0f}/s ({seconds:.2f}s)", flush=True)

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
            self.phases[key] = Phase(key, label, best.count, best.seconds, best.cpu)

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
        both = self.phases["c1"].seconds + self.phases["c10"].seconds
        self.phases["c"] = Phase(
            "c",
            "(c) HTTP push POST /jobs (both queues)",
            2 * a.jobs,
            both,
            _sum_cpu(self.phases["c1"], self.phases["c10"]),
        )
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


def _sum_cpu(x: Phase, y: Phase) -> dict[str, float]:
    return {k: x.cpu[k] + y.cpu[k] for k in x.cpu if k in y.cpu}


async def main_async(
    args: argparse.Namespace,
) -> tuple[dict[str, Phase], dict[str, str]]:
    run_id = secrets.token_hex(4)
    prefix = f"bench-{run_id}"
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
                assert daemon.process is not None
                meter = CpuMeter()
                meter.pids["daemon"] = daemon.process.pid
                info = machine_info(health)
                print(f"prefix {prefix}, daemon pid {daemon.process.pid} on {daemon.base}")
                bench = Bench(args, daemon, raw, meter)
                await bench.baselines(1)
                if args.client == "lean":
                    lean = LeanSession("127.0.0.1", daemon.port)
                    try:
                        await bench.http(lean.post_json, Profiler(daemon.process.pid, profile_dir))
                    finally:
                        await lean.close()
                else:
                    post = aiohttp_poster(session, daemon.base)
                    await bench.http(post, Profiler(daemon.process.pid, profile_dir))
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


def report(phases: dict[str, Phase], info: dict[str, str], args: argparse.Namespace) -> None:
    print(render(phases, info, args))
    if args.profile:
        for path in sorted(Path(args.profile).glob("*.txt")):
            print("\n" + summarize_profile(path))
    if args.json:
        record = {
            "machine": info,
            "args": vars(args),
            "phases": {
                k: {
                    "label": p.label,
                    "count": p.count,
                    "seconds": p.seconds,
                    "rate": p.rate,
                    "cpu": p.cpu,
                }
                for k, p in phases.items()
            },
        }
        Path(args.json).write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=10000, help="jobs per HTTP phase (default 10000)"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (64)")
    parser.add_argument(
        "--raw-jobs",
        type=int,
        default=None,
        help="messages in the raw phases (default 4 x --jobs: they are fast)",
    )
    parser.add_argument("--warmup", type=int, default=500, help="warm-up operations per phase")
    parser.add_argument(
        "--amqp-url", default=os.environ.get("OJS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument(
        "--client",
        choices=("lean", "aiohttp"),
        default="lean",
        help="HTTP load generator: a minimal keep-alive client (default) or aiohttp's",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy the daemon's HTTP phases")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.raw_jobs is None:
        args.raw_jobs = 4 * args.jobs
    if min(args.jobs, args.concurrency, args.raw_jobs, args.warmup) < 1:
        parser.error("--jobs, --concurrency, --raw-jobs and --warmup must be positive")
    return args


def main() -> int:
    args = parse_args()
    phases, info = asyncio.run(main_async(args))
    report(phases, info, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
