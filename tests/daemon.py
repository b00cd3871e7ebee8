"""Run a real `ojs-amqp serve` process for integration tests, and clean its topology up."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AMQP_URL = os.environ.get("OJS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    prefix: str
    store: Path
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        args = [
            sys.executable, "-m", "ojs_amqp", "serve",
            "--http", f"127.0.0.1:{self.port}",
            "--store", str(self.store),
            "--prefix", self.prefix,
            "--amqp-url", AMQP_URL,
            "--test-mode",
            *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path or os.devnull, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"daemon exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                status, _ = request("GET", f"{self.url}/ojs/v1/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("daemon did not become healthy in time")

    def kill(self) -> None:
        """SIGKILL: no clean-up, no flush, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def request(method: str, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/openjobspec+json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw


def delete_topology(prefix: str) -> None:
    """Delete every queue and exchange whose name starts with `prefix.`."""
    asyncio.run(_delete_topology(prefix))


async def _delete_topology(prefix: str) -> None:
    import aio_pika

    def names(kind: str) -> list[str]:
        out = subprocess.run(
            ["rabbitmqctl", "-q", f"list_{kind}", "name"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [n.strip() for n in out.splitlines() if n.strip().startswith(prefix + ".")]

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for name in names("queues"):
            await channel.queue_delete(name)
        for name in names("exchanges"):
            await channel.exchange_delete(name)
