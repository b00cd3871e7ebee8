"""Run a real `ojs-amqp serve` process for integration tests, and clean its topology up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AMQP_URL = os.environ.get("OJS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: argv of the `rabbitmqctl` that reaches the broker at AMQP_URL (a command line, split like a
#: shell would; .ci/run points it at a wrapper for its private RabbitMQ 4.0 node).
RABBITMQCTL = shlex.split(os.environ.get("OJS_TEST_RABBITMQCTL", "rabbitmqctl"))


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
    amqp_url: str = AMQP_URL
    #: Set for a daemon serving HTTPS: the client context that trusts its certificate.
    https: ssl.SSLContext | None = None
    #: Substrings of the ERROR lines a test provokes on purpose (`check` refuses any other
    #: ERROR from the daemon's own loggers).
    expected_errors: list[str] = field(default_factory=list)
    killed: bool = False  # the last process was SIGKILLed on purpose
    #: `--test-mode` (the reset route); False runs the daemon as it is deployed
    test_mode: bool = True

    @property
    def url(self) -> str:
        scheme = "https" if self.https is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        args = [
            sys.executable, "-m", "ojs_amqp", "serve",
            "--http", f"127.0.0.1:{self.port}",
            "--store", str(self.store),
            "--prefix", self.prefix,
            "--amqp-url", self.amqp_url,
            *(["--test-mode"] if self.test_mode else []),
            *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path or os.devnull, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.killed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"daemon exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                status, _ = request("GET", f"{self.url}/ojs/v1/health", context=self.https)
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
            self.killed = True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
                self.killed = False  # not on purpose: `check` reports it

    def check(self) -> None:
        """After `stop`: the daemon exited 0 on SIGTERM (unless the test killed it), and its
        log has no Traceback (but aiormq's WARNING about a lost connection, which the daemon
        rides out) and no ERROR line of its own the test did not expect."""
        if self.process is not None and not self.killed:
            code = self.process.returncode
            assert code == 0, f"the daemon exited with {code}; see {self.log_path}"
        if self.log_path is None or not self.log_path.exists():
            return
        lines = self.log_path.read_text(errors="replace").splitlines()
        tracebacks = [
            n for n, line in enumerate(lines)
            if line.startswith("Traceback") and not _lost_link(lines, n)
        ]  # fmt: skip
        assert not tracebacks, "a Traceback in the daemon's log:\n" + "\n".join(
            lines[max(0, tracebacks[0] - 2) : tracebacks[0] + 20]
        )
        unexpected = [
            line for line in lines
            if re.match(r"\S+ \S+ (ERROR|CRITICAL) ojs_amqp", line)
            and not any(text in line for text in self.expected_errors)
        ]  # fmt: skip
        assert not unexpected, f"unexpected ERROR lines in the daemon's log: {unexpected[:5]}"


def _lost_link(lines: list[str], traceback_at: int) -> bool:
    """Whether the log record a Traceback belongs to is aiormq's WARNING that a connection
    broke (a fault the test injected; the daemon reconnects)."""
    for line in reversed(lines[:traceback_at]):
        if re.match(r"\d{4}-\d\d-\d\d ", line):
            return " WARNING aiormq.connection " in line
    return False


def request(
    method: str,
    url: str,
    body: Any = None,
    timeout: float = 30.0,
    context: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/openjobspec+json")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw


def _shared_ctl(*args: str) -> str:
    return subprocess.run(
        [*RABBITMQCTL, *args], capture_output=True, text=True, check=False, timeout=120
    ).stdout


def delete_topology(
    prefix: str, amqp_url: str = AMQP_URL, ctl: Callable[..., str] = _shared_ctl
) -> None:
    """Delete every queue and exchange whose name starts with `prefix.` (on the shared broker
    unless another node's URL and `rabbitmqctl` runner are given)."""
    asyncio.run(_delete_topology(prefix, amqp_url, ctl))


async def _delete_topology(prefix: str, amqp_url: str, ctl: Callable[..., str]) -> None:
    import aio_pika

    def names(kind: str) -> list[str]:
        out = ctl("-q", f"list_{kind}", "name")
        return [n.strip() for n in out.splitlines() if n.strip().startswith(prefix + ".")]

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in names("queues"):
            await channel.queue_delete(name)
        for name in names("exchanges"):
            await channel.exchange_delete(name)


@contextlib.contextmanager
def shared_daemon(
    tmp: Path, prefix: str, *extra_args: str, test_mode: bool = True
) -> Iterator[Daemon]:
    """A daemon for a whole module or package (tests keep to their own queues), stopped and
    its topology deleted afterwards."""
    daemon = Daemon(
        prefix=prefix, store=tmp / "store.db", log_path=tmp / "daemon.log",
        extra_args=list(extra_args), test_mode=test_mode,
    )  # fmt: skip
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        try:
            delete_topology(prefix)
        finally:
            daemon.check()


def close_connections(name_prefix: str) -> int:
    """Make the shared broker drop every connection whose name starts with `name_prefix`
    (as a network fault would); returns how many it closed."""
    listing = subprocess.run(
        [*RABBITMQCTL, "-q", "list_connections", "pid", "client_properties"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    pids = [
        line.split("\t", 1)[0]
        for line in listing.splitlines()
        if re.search(rf'"connection_name","{re.escape(name_prefix)}', line)
    ]
    for pid in pids:
        subprocess.run(
            [*RABBITMQCTL, "-q", "close_connection", pid, "test"], check=True, timeout=120
        )
    return len(pids)
