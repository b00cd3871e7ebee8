"""py-spy sampling of the daemon during bench_http.py's HTTP phases, and a summary of the costs."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
