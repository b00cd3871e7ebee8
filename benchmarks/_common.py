"""Helpers shared by the benchmarks: the daemon subprocess, HTTP calls, cleanup, the machine.

Each benchmark starts its own daemon (`python -m ojs_amqp serve ... --prefix bench-<random>
--test-mode`), waits for GET /ojs/v1/health, and at the end deletes every queue and exchange
whose name starts with that prefix (found with `rabbitmqctl -q list_queues name` /
`list_exchanges name`), plus any names of its own it passes in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson

BASE = "/ojs/v1"
JSON_HEADERS = {"Content-Type": "application/json"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONNECT_TIMEOUT_S = 15.0
DEFAULT_AMQP_URL = os.environ.get("OJS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


class BenchError(RuntimeError):
    pass


# --- HTTP ----------------------------------------------------------------------------------


async def post_json(session: aiohttp.ClientSession, url: str, body: Any, expect: int) -> Any:
    async with session.post(url, data=orjson.dumps(body), headers=JSON_HEADERS) as resp:
        raw = await resp.read()
        if resp.status != expect:
            raise BenchError(f"POST {url} answered {resp.status}: {raw[:300]!r}")
        return orjson.loads(raw)


# --- the daemon ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    prefix: str
    workdir: Path
    amqp_url: str
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "daemon.log"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError("the daemon is not running")
        return self.process.pid

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "ojs_amqp",
            "serve",
            "--http",
            f"127.0.0.1:{self.port}",
            "--store",
            str(self.workdir / "bench.db"),
            "--prefix",
            self.prefix,
            "--amqp-url",
            self.amqp_url,
            "--test-mode",
            "--log-level",
            "WARNING",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    async def wait_healthy(self, session: aiohttp.ClientSession, timeout_s: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise BenchError(f"the daemon exited; its log:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.base}{BASE}/health") as resp:
                    if resp.status == 200:
                        return orjson.loads(await resp.read())
            await asyncio.sleep(0.1)
        raise BenchError(f"the daemon was not healthy within {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0.0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def broker_pid() -> int | None:
    """The RabbitMQ Erlang VM (beam.smp) on this machine, if it is visible."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == "beam.smp":
                cmdline = (entry / "cmdline").read_bytes()
                if b"rabbit" in cmdline:
                    return int(entry.name)
    return None


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


# --- the broker ----------------------------------------------------------------------------


def rabbitmqctl_list(kind: str, columns: Sequence[str] = ("name",)) -> list[list[str]]:
    """`rabbitmqctl -q list_<kind> <columns>`, one row of tab-separated fields per item."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", f"list_{kind}", *columns],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise BenchError(f"rabbitmqctl list_{kind} failed: {out.stderr.strip()}")
    return [line.strip().split("\t") for line in out.stdout.splitlines() if line.strip()]


def _rabbit_names(kind: str) -> list[str]:
    return [row[0] for row in rabbitmqctl_list(kind)]


def _rabbitmqctl_delete_queue(name: str) -> None:
    subprocess.run(
        ["rabbitmqctl", "-q", "delete_queue", name],
        capture_output=True,
        timeout=60,
        check=False,
    )


async def delete_topology(
    amqp_url: str,
    prefix: str,
    queues: Iterable[str] = (),
    exchanges: Iterable[str] = (),
    use_rabbitmqctl: bool = True,
) -> tuple[int, int]:
    """Delete every queue/exchange named `prefix...` and the given ones; the counts."""
    all_queues, all_exchanges = set(queues), set(exchanges)
    if use_rabbitmqctl and shutil.which("rabbitmqctl"):
        all_queues |= {
            n for n in await asyncio.to_thread(_rabbit_names, "queues") if n.startswith(prefix)
        }
        all_exchanges |= {
            n for n in await asyncio.to_thread(_rabbit_names, "exchanges") if n.startswith(prefix)
        }
    try:
        conn = await aio_pika.connect(amqp_url, timeout=CONNECT_TIMEOUT_S)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        # The broker can stop completing AMQP handshakes (seen when its file_handle_cache is
        # exhausted); queues can still be deleted over the CLI, exchanges cannot.
        print(f"cleanup: AMQP connect failed ({exc!r}); deleting queues with rabbitmqctl")
        for name in sorted(all_queues):
            await asyncio.to_thread(_rabbitmqctl_delete_queue, name)
        print(f"cleanup: exchanges left behind: {sorted(all_exchanges)}")
        return len(all_queues), 0
    try:
        channel = await conn.channel(publisher_confirms=False)
        for name in sorted(all_queues):
            await channel.queue_delete(name)
        for name in sorted(all_exchanges):
            await channel.exchange_delete(name)
    finally:
        await conn.close()
    return len(all_queues), len(all_exchanges)


# --- the machine ---------------------------------------------------------------------------


def machine_info(health: Any) -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "memory": _memory(),
        "rabbitmq": str(health.get("backend", {}).get("version", "unknown")),
        "python": platform.python_version(),
        "aio-pika": metadata.version("aio-pika"),
        "aiohttp": metadata.version("aiohttp"),
        "kernel": platform.release(),
    }


def _memory() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


async def run_window(
    concurrency: int,
    total: int,
    op: Callable[[int], Awaitable[None]],
    timeout_s: float | None = None,
) -> float:
    """Run op(0..total-1) with `concurrency` calls in flight; the wall time in seconds."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            i = next_index
            next_index += 1
            await op(i)

    start = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


def machine_cpu_ticks() -> list[int]:
    """The whole machine's `cpu` line of /proc/stat: user nice system idle iowait irq softirq
    steal (in clock ticks, summed over every core)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu "):
                return [int(v) for v in line.split()[1:9]]
    return [0] * 8


def machine_load(before: list[int], after: list[int], wall_s: float) -> dict[str, float]:
    """Over a phase: cores busy on the whole machine (any process), % of CPU time stolen by
    the hypervisor, and the 1-minute load average at its end: what tells a noisy run apart."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    idle, iowait, steal = delta[3], delta[4], delta[7]
    busy = (total - idle - iowait - steal) / CLK_TCK
    load1 = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        load1 = float(Path("/proc/loadavg").read_text().split()[0])
    return {
        "busy_cores": busy / wall_s if wall_s > 0 else 0.0,
        "steal_pct": 100.0 * steal / total,
        "load1": load1,
    }
