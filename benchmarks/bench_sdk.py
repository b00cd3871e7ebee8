#!/usr/bin/env python
"""The Python SDK (ojs_amqp.sdk) against raw aio-pika and Dramatiq on the same RabbitMQ, in one
run, so every ratio compares figures measured minutes apart on the same machine.

(a) push with publisher confirms, same message (the SDK's job envelope, ~0.7 KB, x-ojs-*
    headers, persistent, mandatory) into the same kind of queue (quorum, job-queue
    arguments):
    (a1) one at a time: each publish's confirm awaited before the next;
         raw = `await exchange.publish(aio_pika.Message(...), mandatory=True)`,
         SDK = `await client.push(...)` (validation with the daemon's parser included);
    (a2) pipelined, batches of B in flight: raw = `asyncio.gather` of B awaited publishes,
         SDK = `await client.push_batch(B envelopes)`.
(b) drain N no-op jobs with one worker process, from spawning the process until it has
    handled and acked all N (the queue is checked empty afterwards):
    Dramatiq = `dramatiq.Worker(RabbitmqBroker, worker_threads=8)`;
    SDK = `ojs_amqp.sdk.Worker` (async no-op handler, `--sdk-concurrency` in flight) with
    reports on: every job's `ojs.report.completed` is published with a confirm before the
    ack (batched as the Worker does by default, or per `--sdk-report-batch-ms/-max`), and
    the daemon consumes and applies the reports meanwhile.

Each measurement runs `--rounds` times, alternating which side goes first; the summary gives
the median (and best) of each and the ratios of the medians. The script starts its own
daemon (random prefix `bench-...`) and deletes every queue and exchange it made at the end.

    python benchmarks/bench_sdk.py [--rounds 3] [--drain-jobs 20000] [--json OUT]
                                   [--drain-only] [--sdk-report-batch-ms MS] [--sdk-prefetch N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import aiormq
import orjson
from _common import BenchError, Daemon, cpu_seconds, delete_topology, machine_info
from _common import broker_pid as any_broker_pid

from ojs_amqp.amqp import codec
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.core.envelope import parse_enqueue
from ojs_amqp.core.job import to_wire

TARGET_PUSH = 0.9
TARGET_DRAIN = 1.3
JOB_TYPE = "bench.noop"
DRAIN_TIMEOUT_S = 600.0


def payload(i: int) -> dict[str, Any]:
    """The job's one argument (as in bench_http.py)."""
    return {"n": i, "customer": f"cust-{i % 997:04d}", "action": "bench.noop", "note": "x" * 180}


# --- the broker process ----------------------------------------------------------------------


def broker_pid(port: int) -> int | None:
    """The process listening on the AMQP port (other RabbitMQs may run on this machine)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return any_broker_pid()


# --- results -----------------------------------------------------------------------------------


@dataclass
class Sample:
    count: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Series:
    key: str
    label: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(s.rate for s in self.samples)

    @property
    def best(self) -> float:
        return max(s.rate for s in self.samples)

    def cpu_percent(self, who: str) -> float | None:
        values = [100 * s.cpu[who] / s.seconds for s in self.samples if who in s.cpu]
        return statistics.median(values) if values else None


# --- (a) push ----------------------------------------------------------------------------------


class PushBench:
    """Raw aio-pika and the SDK client publishing the same messages to quorum queues."""

    def __init__(self, args: argparse.Namespace, prefix: str) -> None:
        self.args = args
        self.topology = Topology(prefix)
        self.raw_exchange = f"{prefix}.raw.exchange"
        self.raw_queue = f"{prefix}.raw.queue"
        self.sdk_queue = f"push-{secrets.token_hex(3)}"
        template = parse_enqueue(
            {"type": JOB_TYPE, "args": [payload(0)], "queue": self.sdk_queue},
            now_ms=int(time.time() * 1000),
            new_id="019a0000-0000-7000-8000-000000000000",
        )
        self.template = to_wire(template)
        self.headers = dict(codec.encode(template).properties.headers or {})

    def raw_message(self, i: int) -> aio_pika.Message:
        """What a plain aio-pika producer sends: an envelope of its own, built per message."""
        job_id = f"019a0000-0000-7000-8000-{i:012d}"
        body = orjson.dumps({**self.template, "id": job_id, "args": [payload(i)]})
        return aio_pika.Message(
            body=body,
            content_type=codec.CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=job_id,
            type=JOB_TYPE,
            priority=4,
            app_id="ojs",
            headers={**self.headers, "x-ojs-job-id": job_id},
        )

    async def setup(self) -> None:
        conn = await aio_pika.connect(self.args.amqp_url)
        async with conn:
            channel = await conn.channel()
            exchange = await channel.declare_exchange(
                self.raw_exchange, aio_pika.ExchangeType.DIRECT, durable=True
            )
            queue = await channel.declare_queue(
                self.raw_queue,
                durable=True,
                arguments=self.topology.job_queue_arguments(self.sdk_queue),
            )
            await queue.bind(exchange, "raw")

    async def purge(self, channel: aio_pika.abc.AbstractChannel) -> None:
        for name in (self.raw_queue, self.topology.job_queue(self.sdk_queue)):
            queue = await channel.get_queue(name, ensure=False)
            await queue.purge()

    async def raw(self, exchange: aio_pika.abc.AbstractExchange, total: int, batch: int) -> float:
        async def one(i: int) -> None:
            confirmation = await exchange.publish(self.raw_message(i), "raw", mandatory=True)
            if not isinstance(confirmation, aiormq.spec.Basic.Ack):
                raise BenchError(f"raw publish not confirmed: {confirmation!r}")

        start = time.perf_counter()
        if batch == 1:
            for i in range(total):
                await one(i)
        else:
            for first in range(0, total, batch):
                await asyncio.gather(*(one(i) for i in range(first, min(total, first + batch))))
        return time.perf_counter() - start

    async def sdk(self, client: Any, total: int, batch: int) -> float:
        start = time.perf_counter()
        if batch == 1:
            for i in range(total):
                await client.push(JOB_TYPE, [payload(i)], queue=self.sdk_queue)
        else:
            for first in range(0, total, batch):
                envelopes = [
                    {"type": JOB_TYPE, "args": [payload(i)], "queue": self.sdk_queue}
                    for i in range(first, min(total, first + batch))
                ]
                await client.push_batch(envelopes)
        return time.perf_counter() - start


# --- (b) drain: the worker processes -----------------------------------------------------------


def sdk_worker_role(args: argparse.Namespace) -> None:
    """Runs in its own process: an SDK worker until it has completed --drain-jobs jobs."""
    import uvloop

    import ojs_amqp.sdk
    from ojs_amqp.sdk import JobContext, Worker

    # As `ojs-amqp worker` does (the fast frame reader is opt-in; older code had it always on).
    getattr(ojs_amqp.sdk, "use_fast_frame_reader", lambda: True)()

    async def main() -> dict[str, float]:
        settings: dict[str, Any] = {}
        if args.sdk_report_batch_ms is not None:
            settings["report_batch_ms"] = args.sdk_report_batch_ms
        if args.sdk_report_batch_max is not None:
            settings["report_batch_max"] = args.sdk_report_batch_max
        if args.sdk_prefetch is not None:
            settings["prefetch"] = args.sdk_prefetch
        worker = Worker(
            args.amqp_url, prefix=args.prefix, queues=[args.queue],
            concurrency=args.sdk_concurrency, connection_name="bench-sdk-worker", **settings,
        )  # fmt: skip

        async def noop(ctx: JobContext) -> None:
            return None

        worker.register(JOB_TYPE, noop)
        task = asyncio.create_task(worker.run(handle_signals=False))
        first = 0.0
        while worker.stats.completed < args.drain_jobs:
            if task.done():
                task.result()
                raise BenchError("the worker stopped early")
            if not first and worker.stats.completed:
                first = time.time()
            await asyncio.sleep(0.002)
        for _ in range(3):  # the last acks are written on the next loop turns
            await asyncio.sleep(0)
        done = time.time()
        cpu = cpu_seconds(os.getpid())
        await worker.stop(grace_period=5)
        await task
        stats = worker.stats
        return {
            "first": first, "done": done, "cpu": cpu, "failed": stats.failed,
            "batches": getattr(stats, "report_batches", 0),
        }  # fmt: skip

    print(json.dumps(uvloop.run(main())), flush=True)


def dramatiq_worker_role(args: argparse.Namespace) -> None:
    """Runs in its own process: a Dramatiq worker (8 threads) until --drain-jobs are done."""
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    done = threading.Event()
    counter = itertools.count(1)
    times: dict[str, float] = {}

    class Count(dramatiq.Middleware):
        def after_process_message(self, broker: Any, message: Any, **_: Any) -> None:
            n = next(counter)
            if n == 1:
                times["first"] = time.time()
            if n == args.drain_jobs:
                times["done"] = time.time()
                done.set()

    broker = RabbitmqBroker(url=args.amqp_url)
    broker.add_middleware(Count())
    dramatiq.set_broker(broker)
    dramatiq.actor(queue_name=args.queue, actor_name="bench_noop")(_dramatiq_noop)
    worker = dramatiq.Worker(broker, worker_threads=args.dramatiq_threads)
    worker.start()
    if not done.wait(DRAIN_TIMEOUT_S):
        raise BenchError("dramatiq did not finish in time")
    times["cpu"] = cpu_seconds(os.getpid())
    worker.stop()
    broker.close()
    print(json.dumps(times), flush=True)


def _dramatiq_noop(item: dict[str, Any]) -> None:
    return None


# --- (b) drain: the driver ---------------------------------------------------------------------


@dataclass
class DrainBench:
    args: argparse.Namespace
    daemon: Daemon
    pids: dict[str, int]
    dramatiq_queues: list[str] = field(default_factory=list)

    def _spawn(self, role: str, queue: str) -> tuple[subprocess.Popen[bytes], float]:
        cmd = [
            sys.executable, __file__, "--role", role, "--queue", queue,
            "--prefix", self.daemon.prefix, "--amqp-url", self.args.amqp_url,
            "--drain-jobs", str(self.args.drain_jobs),
            "--sdk-concurrency", str(self.args.sdk_concurrency),
            "--dramatiq-threads", str(self.args.dramatiq_threads),
        ]  # fmt: skip
        for flag, value in (
            ("--sdk-report-batch-ms", self.args.sdk_report_batch_ms),
            ("--sdk-report-batch-max", self.args.sdk_report_batch_max),
            ("--sdk-prefetch", self.args.sdk_prefetch),
        ):
            if value is not None:
                cmd += [flag, str(value)]
        started = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return proc, started

    async def _run(self, role: str, queue: str, count_queue: str) -> Sample:
        meter = {who: cpu_seconds(pid) for who, pid in self.pids.items()}
        proc, started = self._spawn(role, queue)
        out, err = await asyncio.to_thread(proc.communicate, None, DRAIN_TIMEOUT_S)
        if proc.returncode != 0:
            raise BenchError(f"{role} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        cpu = {who: cpu_seconds(pid) - meter[who] for who, pid in self.pids.items()}
        seconds = result["done"] - started
        cpu["worker"] = result["cpu"]
        left = await _ready_count(self.args.amqp_url, count_queue)
        if left:
            raise BenchError(f"{role}: {left} messages left in {count_queue} after the drain")
        return Sample(
            self.args.drain_jobs,
            seconds,
            {k: v for k, v in cpu.items() if k != "client"},
            {
                "processing_s": result["done"] - result["first"],
                "started": started,
                "batches": float(result.get("batches", 0)),
            },
        )

    async def sdk(self, client: Any, rnd: int, *, pause_daemon: bool = False) -> Sample:
        """The SDK drain; afterwards, wait until the daemon has applied every report (the
        control queue is empty) so the next measurement does not pay for this one. With
        `pause_daemon` the daemon is SIGSTOPped while the worker runs: the cost of the
        daemon applying reports concurrently, isolated (it applies them after SIGCONT)."""
        queue = f"drain-{rnd}-{secrets.token_hex(3)}"
        await _preload_sdk(client, queue, self.args.drain_jobs)
        await asyncio.sleep(1.0)  # let the broker settle after the preload
        if pause_daemon:
            os.kill(self.daemon.pid, signal.SIGSTOP)
        try:
            sample = await self._run("sdk-worker", queue, client.topology.job_queue(queue))
        finally:
            if pause_daemon:
                os.kill(self.daemon.pid, signal.SIGCONT)
        control = client.topology.control_queue(queue)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while await _ready_count(self.args.amqp_url, control):
            if time.monotonic() > deadline:
                raise BenchError(f"the daemon did not apply the reports in {control}")
        sample.extra["applied_s"] = time.time() - sample.extra["started"]
        return sample

    async def dramatiq(self, rnd: int) -> Sample:
        queue = f"{self.daemon.prefix.replace('-', '_')}_dramatiq_{rnd}"
        self.dramatiq_queues += [queue, f"{queue}.DQ", f"{queue}.XQ"]
        await asyncio.to_thread(_preload_dramatiq, self.args.amqp_url, queue, self.args.drain_jobs)
        await asyncio.sleep(1.0)
        return await self._run("dramatiq-worker", queue, queue)


async def _preload_sdk(client: Any, queue: str, total: int) -> None:
    for first in range(0, total, 1000):
        await client.push_batch(
            [
                {"type": JOB_TYPE, "args": [payload(i)], "queue": queue}
                for i in range(first, min(total, first + 1000))
            ]
        )


def _preload_dramatiq(url: str, queue: str, total: int) -> None:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=url)
    dramatiq.set_broker(broker)
    actor = dramatiq.actor(queue_name=queue, actor_name="bench_noop", broker=broker)(_dramatiq_noop)
    for i in range(total):
        actor.send(payload(i))
    broker.close()


async def _ready_count(url: str, queue: str) -> int:
    """Messages ready in a queue, half a second from now (after a consumer is gone, its
    unacked ones are back as ready)."""
    await asyncio.sleep(0.5)
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


# --- the run -----------------------------------------------------------------------------------


async def alternate(
    rnd: int, first: Callable[[], Awaitable[None]], second: Callable[[], Awaitable[None]]
) -> None:
    """Run both, the order swapped every round, so a drift on the machine hits both sides."""
    if rnd % 2 == 0:
        await first()
        await second()
    else:
        await second()
        await first()


@dataclass
class Rounds:
    """One round = (a1), (a2) and (b), each side of each once."""

    args: argparse.Namespace
    series: dict[str, Series]
    push: PushBench
    drain: DrainBench
    client: Any
    exchange: aio_pika.abc.AbstractExchange
    admin: aio_pika.abc.AbstractChannel

    async def push_pair(self, rnd: int, key: str, batch: int, total: int) -> None:
        async def raw_side() -> None:
            seconds = await self.push.raw(self.exchange, total, batch)
            _record(self.series[f"{key}-raw"], Sample(total, seconds))
            await self.push.purge(self.admin)

        async def sdk_side() -> None:
            seconds = await self.push.sdk(self.client, total, batch)
            _record(self.series[f"{key}-sdk"], Sample(total, seconds))
            await self.push.purge(self.admin)

        await alternate(rnd, raw_side, sdk_side)

    async def drain_pair(self, rnd: int) -> None:
        async def dramatiq_side() -> None:
            _record(self.series["b-dramatiq"], await self.drain.dramatiq(rnd))

        async def sdk_side() -> None:
            _record(self.series["b-sdk"], await self.drain.sdk(self.client, rnd))

        await alternate(rnd, dramatiq_side, sdk_side)
        if self.args.breakdown:
            paused = await self.drain.sdk(self.client, rnd, pause_daemon=True)
            _record(self.series["b-sdk-paused"], paused)

    async def run(self) -> None:
        if self.args.drain_only:
            for rnd in range(self.args.rounds):
                print(f"round {rnd + 1}/{self.args.rounds}", flush=True)
                await self.drain_pair(rnd)
            return
        await self.push.raw(self.exchange, self.args.warmup, 50)  # warm-up, untimed
        await self.push.sdk(self.client, self.args.warmup, 50)
        await self.push.purge(self.admin)
        for rnd in range(self.args.rounds):
            print(f"round {rnd + 1}/{self.args.rounds}", flush=True)
            await self.push_pair(rnd, "a1", 1, self.args.single_jobs)
            await self.push_pair(rnd, "a2", self.args.batch, self.args.batch_jobs)
            await self.drain_pair(rnd)


def _series(args: argparse.Namespace) -> dict[str, Series]:
    labels = (
        ("a1-raw", "(a1) raw aio-pika publish, one at a time"),
        ("a1-sdk", "(a1) SDK client.push, one at a time"),
        ("a2-raw", f"(a2) raw aio-pika publish, {args.batch} in flight"),
        ("a2-sdk", f"(a2) SDK client.push_batch({args.batch})"),
        ("b-dramatiq", f"(b) Dramatiq worker, 1 process x {args.dramatiq_threads} threads"),
        ("b-sdk", f"(b) SDK worker, 1 process, concurrency {args.sdk_concurrency}, reports"),
        ("b-sdk-paused", "(b) SDK worker as above, daemon SIGSTOPped meanwhile"),
    )
    out = {key: Series(key, label) for key, label in labels}
    if not args.breakdown:
        del out["b-sdk-paused"]
    return out


async def run(args: argparse.Namespace) -> tuple[dict[str, Series], dict[str, str]]:
    import ojs_amqp.sdk
    from ojs_amqp.sdk import Client

    prefix = f"bench-{secrets.token_hex(4)}"
    series = _series(args)
    with tempfile.TemporaryDirectory(prefix="ojs-bench-sdk-") as tmp:
        daemon = Daemon(prefix, Path(tmp), args.amqp_url)
        push = PushBench(args, prefix)
        drain = DrainBench(args, daemon, {})
        try:
            daemon.start()
            async with aiohttp.ClientSession() as session:
                health = await daemon.wait_healthy(session)
            drain.pids["daemon"] = daemon.pid
            found = broker_pid(urlsplit(args.amqp_url).port or 5672)
            if found is not None:
                drain.pids["broker"] = found
            info = machine_info(health)
            print(f"prefix {prefix}; daemon pid {daemon.pid}; broker pid {found}", flush=True)
            await push.setup()
            conn = await aio_pika.connect(args.amqp_url)
            # The client's connection reads frames as before (the SDK used to install the
            # reader on its first connect; it is opt-in now), the aio-pika baseline's as before.
            getattr(ojs_amqp.sdk, "use_fast_frame_reader", lambda: True)()
            async with conn, Client(args.amqp_url, prefix=prefix) as client:
                channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
                exchange = await channel.get_exchange(push.raw_exchange, ensure=False)
                admin = await conn.channel()
                await Rounds(args, series, push, drain, client, exchange, admin).run()
        except BaseException:
            print(f"daemon log tail:\n{daemon.log_tail()}", file=sys.stderr)
            raise
        finally:
            daemon.stop()
            queues = [push.raw_queue, *drain.dramatiq_queues]
            deleted = await delete_topology(args.amqp_url, prefix, queues, [push.raw_exchange])
            print(f"cleanup: deleted {deleted[0]} queues and {deleted[1]} exchanges")
    return series, info


def _record(series: Series, sample: Sample) -> None:
    series.samples.append(sample)
    extra = ""
    if "processing_s" in sample.extra:
        extra = f", {sample.count / sample.extra['processing_s']:,.0f}/s after the first job"
    if "applied_s" in sample.extra:
        extra += f"; daemon applied all reports {sample.extra['applied_s']:.1f}s after start"
    if sample.extra.get("batches"):
        extra += f"; {sample.count / sample.extra['batches']:.1f} reports per batch"
    cpu = ", ".join(f"{k} {100 * v / sample.seconds:.0f}%" for k, v in sorted(sample.cpu.items()))
    print(
        f"  {series.label}: {sample.rate:,.0f}/s ({sample.seconds:.2f}s{extra})"
        + (f" [cpu {cpu}]" if cpu else ""),
        flush=True,
    )


def render(series: dict[str, Series], info: dict[str, str], args: argparse.Namespace) -> str:
    out = ["", "machine: " + ", ".join(f"{k} {v}" for k, v in info.items())]
    out.append(f"rounds: {args.rounds} (figures: median, best in brackets)")
    out.append("")
    for s in series.values():
        if not s.samples:
            continue
        cpu = ""
        if s.key.startswith("b-"):
            parts = [
                f"{who} {value:.0f}%"
                for who in ("worker", "daemon", "broker")
                if (value := s.cpu_percent(who)) is not None
            ]
            cpu = "   cpu: " + ", ".join(parts)
            applied = [x.extra["applied_s"] for x in s.samples if "applied_s" in x.extra]
            if applied:
                cpu += f"; all reports applied {statistics.median(applied):.1f}s after start"
        out.append(f"{s.label:<62} {s.median:>9,.0f}/s  [{s.best:,.0f}]{cpu}")
    out.append("")
    for label, num, den, target in (
        ("(a1) push one at a time, SDK / raw", "a1-sdk", "a1-raw", TARGET_PUSH),
        ("(a2) push pipelined, SDK / raw", "a2-sdk", "a2-raw", TARGET_PUSH),
        ("(b) drain, SDK / Dramatiq", "b-sdk", "b-dramatiq", TARGET_DRAIN),
    ):
        if not series[num].samples or not series[den].samples:
            continue
        ratio = series[num].median / series[den].median
        best = series[num].best / series[den].best
        verdict = "MET" if ratio >= target else "NOT MET"
        out.append(
            f"{label:<40} {ratio:5.2f}  (best/best {best:4.2f})  target {target:.2f}  {verdict}"
        )
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of everything (3)")
    parser.add_argument("--single-jobs", type=int, default=2000, help="(a1) publishes (2000)")
    parser.add_argument("--batch-jobs", type=int, default=20000, help="(a2) publishes (20000)")
    parser.add_argument("--batch", type=int, default=500, help="(a2) publishes in flight (500)")
    parser.add_argument("--drain-jobs", type=int, default=20000, help="(b) jobs (20000)")
    parser.add_argument("--sdk-concurrency", type=int, default=64, help="(b) SDK worker (64)")
    parser.add_argument("--dramatiq-threads", type=int, default=8, help="(b) Dramatiq (8)")
    parser.add_argument(
        "--sdk-report-batch-ms", type=float, help="(b) SDK Worker report_batch_ms (its default)"
    )
    parser.add_argument(
        "--sdk-report-batch-max", type=int, help="(b) SDK Worker report_batch_max (its default)"
    )
    parser.add_argument("--sdk-prefetch", type=int, help="(b) SDK Worker prefetch (its default)")
    parser.add_argument("--drain-only", action="store_true", help="run (b) only")
    parser.add_argument("--warmup", type=int, default=500, help="untimed publishes first (500)")
    parser.add_argument(
        "--amqp-url", default=os.environ.get("OJS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also drain with the daemon paused (SIGSTOP), to show what applying reports "
        "concurrently costs",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    # internal: the worker processes of (b)
    parser.add_argument(
        "--role",
        choices=("driver", "sdk-worker", "dramatiq-worker"),
        default="driver",
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    numbers = (args.rounds, args.single_jobs, args.batch_jobs, args.batch, args.drain_jobs,
               args.sdk_concurrency, args.dramatiq_threads, args.warmup)  # fmt: skip
    if min(numbers) < 1:
        parser.error("all counts must be positive")
    return args


def main() -> int:
    args = parse_args()
    if args.role == "sdk-worker":
        sdk_worker_role(args)
        return 0
    if args.role == "dramatiq-worker":
        dramatiq_worker_role(args)
        return 0
    series, info = asyncio.run(run(args))
    print(render(series, info, args))
    if args.json:
        record = {
            "machine": info,
            "args": vars(args),
            "series": {
                k: {
                    "label": s.label,
                    "median": s.median,
                    "best": s.best,
                    "samples": [vars(x) for x in s.samples],
                }
                for k, s in series.items()
            },
        }
        Path(args.json).write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
