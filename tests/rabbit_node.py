"""A private RabbitMQ node for tests that stop, restart or reconfigure the broker.

The shared broker (port 5672) is used by other people's tests and must never be disturbed,
so destructive tests get a node of their own: own node name, ports, data, logs, config and
Erlang cookie, all in one temporary directory that is removed at the end. The node is started
with the scripts in /usr/lib/rabbitmq/bin (not the /usr/sbin wrappers, which `su` to the
`rabbitmq` user and use its cookie): it runs as the test's user with `HOME` in the temporary
directory, so its `rabbitmqctl` cannot even authenticate to the shared node.

It listens on plain AMQP and on AMQP over TLS; the TLS listener demands a client certificate
signed by the test CA (`verify_peer`, `fail_if_no_peer_cert`).

Which RabbitMQ: `OJS_TEST_BROKER` (`3.10`, the default, or `4.0`). A 3.10 node runs from the
host's scripts; a 4.0 node runs from a Debian trixie root (`OJS_TEST_RABBITMQ_ROOT`, built by
`.ci/run` with debootstrap) through `chroot`, with its own epmd port, and every file it reads
(config, certificates, cookie, data) in a directory under that root's /tmp.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.daemon import free_port
from tests.tls_certs import Certs, make_certs

SBIN = Path(os.environ.get("OJS_TEST_RABBITMQ_SBIN", "/usr/lib/rabbitmq/bin"))
#: The RabbitMQ series under test: the shared broker's (OJS_TEST_AMQP_URL) and private nodes'.
BROKER = os.environ.get("OJS_TEST_BROKER", "3.10")
BROKERS = ("3.10", "4.0")
#: Root of the Debian trixie tree that holds RabbitMQ 4.0.5 (for OJS_TEST_BROKER=4.0).
ROOT_4 = Path(os.environ.get("OJS_TEST_RABBITMQ_ROOT", "/var/cache/ojs-amqp/trixie-rabbitmq-4.0"))
#: Where the scripts are inside that root.
CHROOT_SBIN = "/usr/lib/rabbitmq/bin"
#: Broker user for TLS tests; its password must never show in a daemon log.
TLS_USER = "ojs-tls"
START_TIMEOUT_S = 90.0


@dataclass
class RabbitNode:
    base: Path
    #: The chroot the node runs in (RabbitMQ 4.0), or None for the host's RabbitMQ (3.10).
    root: Path | None = None
    name: str = field(default_factory=lambda: f"ojsfault-{secrets.token_hex(4)}@localhost")
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    tls_password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(12))
    certs: Certs | None = None
    started_in_s: float = 0.0
    #: Its own epmd (chroot nodes only; the host's nodes share the host's epmd).
    epmd_port: int | None = None
    _watchdog: subprocess.Popen[bytes] | None = None

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def amqps_url(self) -> str:
        """TLS with user and password; the host name matches the server certificate."""
        return f"amqps://{TLS_USER}:{self.tls_password}@localhost:{self.tls_port}/"

    @property
    def log_file(self) -> Path:
        return self.base / "log" / f"{self.name}.log"

    def inner(self, path: Path) -> str:
        """`path` as the node sees it (inside its chroot, if it has one)."""
        if self.root is None:
            return str(path)
        return "/" + str(path.relative_to(self.root))

    def command(self, script: str, *args: str) -> list[str]:
        """argv that runs one of RabbitMQ's scripts for this node (through chroot for 4.0)."""
        if self.root is None:
            return [str(SBIN / script), *args]
        return ["chroot", str(self.root), f"{CHROOT_SBIN}/{script}", *args]

    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_EPMD_"))
        }  # fmt: skip
        env.update(
            HOME=self.inner(self.base / "home"),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=self.inner(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=self.inner(self.base / "log"),
            RABBITMQ_CONFIG_FILE=self.inner(self.base / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=self.inner(self.base / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=self.inner(self.base / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=self.inner(self.pid_file),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        if self.epmd_port is not None:
            env["ERL_EPMD_PORT"] = str(self.epmd_port)
        return env

    @property
    def pid_file(self) -> Path:
        return self.base / "node.pid"

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """`rabbitmqctl -n <this node> ...`; never reaches the shared node (other cookie)."""
        done = subprocess.run(
            self.command("rabbitmqctl", "-q", "-n", self.name, *args),
            env=self.env(), cwd=self.base, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.strip()[-2000:]}"
            )
        return done.stdout

    # --- lifecycle -------------------------------------------------------------------------

    def _write_config(self) -> None:
        assert self.certs is not None
        c = self.certs
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {self.inner(c.ca)}\n"
            f"ssl_options.certfile = {self.inner(c.server_cert)}\n"
            f"ssl_options.keyfile = {self.inner(c.server_key)}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        home = self.base / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)

    def start(self) -> None:
        """Start detached, wait until it serves AMQP, add the TLS user."""
        if self.root is None and not (SBIN / "rabbitmq-server").exists():
            raise RuntimeError(
                f"{SBIN}/rabbitmq-server not found: install rabbitmq-server (Debian package) "
                "or point OJS_TEST_RABBITMQ_SBIN at its scripts"
            )
        if self.root is not None:
            _check_root(self.root)
        self.certs = make_certs(self.base / "certs")
        self._write_config()
        started = time.monotonic()
        subprocess.run(
            self.command("rabbitmq-server", "-detached"), env=self.env(), cwd=self.base,
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self._start_watchdog()
        try:
            # `wait` polls until the pid file's process runs the node; then the app itself.
            self.ctl("wait", "--timeout", str(int(START_TIMEOUT_S)), self.inner(self.pid_file),
                     timeout=START_TIMEOUT_S + 10)  # fmt: skip
            self.ctl("await_startup", "--timeout", str(int(START_TIMEOUT_S)))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            tail = self.log_file.read_text()[-3000:] if self.log_file.exists() else "(no log)"
            self.stop()
            raise RuntimeError(f"private RabbitMQ node did not start: {exc}\n{tail}") from None
        self.started_in_s = time.monotonic() - started
        self.ctl("add_user", TLS_USER, self.tls_password)
        self.ctl("set_permissions", "-p", "/", TLS_USER, ".*", ".*", ".*")

    def _start_watchdog(self) -> None:
        """Stops the node if this test process dies without tearing down (crash, SIGKILL)."""
        script = (
            "import json, os, shutil, subprocess, sys, time\n"
            "parent, node, base = int(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
            "ctl, epmd = json.loads(sys.argv[4]), json.loads(sys.argv[5])\n"
            "while True:\n"
            "    try:\n"
            "        os.kill(parent, 0)\n"
            "    except ProcessLookupError:\n"
            "        break\n"
            "    time.sleep(2)\n"
            "subprocess.run([*ctl, '-q', '-n', node, 'stop'], timeout=60)\n"
            "if epmd:\n"
            "    subprocess.run(epmd, timeout=30)\n"
            "shutil.rmtree(base, ignore_errors=True)\n"
        )
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", script, str(os.getpid()), self.name, str(self.base),
             json.dumps(self.command("rabbitmqctl")), json.dumps(self._epmd_kill())],
            env=self.env(), cwd=self.base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def stop_app(self) -> None:
        """Stop RabbitMQ inside the running Erlang VM: every connection drops, listeners close."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup", "--timeout", "60")

    def ensure_running(self) -> None:
        """Bring the app back if a test left it stopped (so the next test starts clean)."""
        status = self.ctl("eval", "rabbit:is_running().", check=False).strip()
        if status != "true":
            self.start_app()

    def stop(self) -> None:
        """Stop the node, wait for its VM to exit, remove every file it had."""
        pid = self._node_pid()
        if self.pid_file.exists():
            self.ctl("stop", self.inner(self.pid_file), timeout=60, check=False)
        if pid is not None:
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):  # the node we started, by its own pid: never a broad kill
                os.kill(pid, signal.SIGKILL)
        if self.epmd_port is not None:  # its own epmd, which outlives the node otherwise
            subprocess.run(self._epmd_kill(), capture_output=True, timeout=30, check=False)
        if self._watchdog is not None and self._watchdog.poll() is None:
            self._watchdog.terminate()
            self._watchdog.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)

    def write_ctl_script(self, path: Path) -> None:
        """A `rabbitmqctl` for this node alone, as an executable script (for OJS_TEST_RABBITMQCTL
        in .ci/run's pass against its own node): the node's cookie home and epmd port."""
        env = self.env()
        keep = ("HOME", "ERL_EPMD_PORT", "ERL_EPMD_ADDRESS", "RABBITMQ_NODENAME")
        assignments = " ".join(shlex.quote(f"{k}={env[k]}") for k in keep if k in env)
        argv = " ".join(shlex.quote(a) for a in self.command("rabbitmqctl", "-n", self.name))
        path.write_text(f'#!/bin/sh\nexec env {assignments} {argv} "$@"\n')
        path.chmod(0o755)

    def _epmd_kill(self) -> list[str]:
        """argv that stops this node's own epmd ([] when it shares the host's)."""
        if self.root is None or self.epmd_port is None:
            return []
        return ["chroot", str(self.root), "/usr/bin/epmd", "-port", str(self.epmd_port), "-kill"]

    def _node_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _check_root(root: Path) -> None:
    """The trixie root must hold RabbitMQ and have /proc mounted (Erlang reads it); mount it
    if needed. It is never unmounted here: other nodes may be running from the same root."""
    if not (root / CHROOT_SBIN.lstrip("/") / "rabbitmq-server").exists():
        raise RuntimeError(
            f"no RabbitMQ 4.0 in {root}: build it with `debootstrap --variant=minbase "
            f"--include=rabbitmq-server trixie {root}` (.ci/run does) or point "
            "OJS_TEST_RABBITMQ_ROOT at such a root"
        )
    proc = root / "proc"
    if not os.path.ismount(proc):
        subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True, timeout=30)


def new_node(broker: str = BROKER) -> RabbitNode:
    """A node of the given RabbitMQ series in a fresh temporary directory (not started)."""
    if broker not in BROKERS:
        raise RuntimeError(f"OJS_TEST_BROKER={broker!r}: expected one of {', '.join(BROKERS)}")
    if broker == "3.10":
        return RabbitNode(base=Path(tempfile.mkdtemp(prefix="ojsfault-")))
    (ROOT_4 / "tmp").mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="ojsfault-", dir=ROOT_4 / "tmp"))
    return RabbitNode(base=base, root=ROOT_4, epmd_port=free_port())


def main(argv: list[str] | None = None) -> int:
    """Run one private node until SIGTERM or SIGINT (.ci/run's node for a whole pytest pass).

    Once the node serves AMQP, writes `--ready` as shell assignments (OJS_TEST_AMQP_URL,
    OJS_TEST_RABBITMQCTL, NODE_VERSION, NODE_PID); stops the node and removes its files on exit.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.rabbit_node")
    parser.add_argument("--broker", choices=BROKERS, default=BROKER)
    parser.add_argument("--ready", type=Path, required=True, help="file written when up")
    args = parser.parse_args(argv)
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda n, _frame: stopping.append(n))
    node = new_node(args.broker)
    node.start()
    try:
        ctl = node.base / "rabbitmqctl"
        node.write_ctl_script(ctl)
        version = node.ctl("eval", "rabbit_misc:version().").strip().strip('"')
        values = {
            "OJS_TEST_AMQP_URL": node.amqp_url,
            "OJS_TEST_RABBITMQCTL": str(ctl),
            "NODE_VERSION": version,
            "NODE_PID": str(node._node_pid()),
            "NODE_STARTED_IN_S": f"{node.started_in_s:.1f}",
        }
        tmp = args.ready.with_suffix(".tmp")
        tmp.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))
        tmp.rename(args.ready)
        pid = node._node_pid()
        while not stopping:
            if pid is None or not _alive(pid):
                print(f"private RabbitMQ node {node.name} died", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
