from __future__ import annotations

import contextlib
import os
import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.daemon import AMQP_URL, RABBITMQCTL, Daemon, delete_topology
from tests.rabbit_node import BROKER, RabbitNode, new_node

SESSION_PREFIX = f"t{uuid.uuid4().hex[:8]}"


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM ends the run as Ctrl-C does, so fixtures still stop their daemons and private
    nodes (.ci/run stops its background passes that way; they start with SIGINT ignored)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak variants (marker `soak`) are deselected, visibly, unless OJS_SOAK=1."""
    if os.environ.get("OJS_SOAK") == "1":
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]


def pytest_report_header(config: pytest.Config) -> str:
    """Which broker this pass tests (.ci/run runs one pass per broker series)."""
    return (
        f"broker under test: RabbitMQ {BROKER} (OJS_TEST_BROKER) at {AMQP_URL}, "
        f"rabbitmqctl: {' '.join(RABBITMQCTL)}; private nodes: RabbitMQ {BROKER}"
    )


def _broker_version() -> str:
    """The version the broker at AMQP_URL announces in its AMQP handshake."""
    import pika

    params = pika.URLParameters(AMQP_URL)
    params.socket_timeout = params.blocked_connection_timeout = 10
    connection = pika.BlockingConnection(params)
    try:
        version = connection._impl.server_properties.get("version", b"?")
    finally:
        connection.close()
    return version.decode() if isinstance(version, bytes) else str(version)


def _broker_reachable() -> bool:
    parts = urlsplit(AMQP_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def broker() -> str:
    """The broker URL. Without a broker the tests that need one fail, so a run cannot pass
    with half the suite skipped; OJS_TEST_NO_BROKER=1 skips them instead, on purpose (never
    set by .ci/run)."""
    if not _broker_reachable():
        if os.environ.get("OJS_TEST_NO_BROKER") == "1":
            pytest.skip(f"RabbitMQ is not reachable at {AMQP_URL} (OJS_TEST_NO_BROKER=1)")
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_URL}; OJS_TEST_NO_BROKER=1 skips")
    if "OJS_TEST_BROKER" in os.environ:  # a pass that names its broker must really test it
        version = _broker_version()
        if not version.startswith(BROKER + "."):
            pytest.fail(f"OJS_TEST_BROKER={BROKER} but {AMQP_URL} is RabbitMQ {version}")
    return AMQP_URL


@contextlib.contextmanager
def daemon_factory(
    tmp_path: Path, amqp_url: str = AMQP_URL, cleanup: Callable[[str], None] = delete_topology
) -> Iterator[Callable[..., Daemon]]:
    """Each daemon made gets its own topology prefix and store; both vanish afterwards."""
    made: list[Daemon] = []

    def factory(
        *extra_args: str, start: bool = True, amqp: str = amqp_url, test_mode: bool = True
    ) -> Daemon:
        prefix = f"{SESSION_PREFIX}-{len(made)}-{uuid.uuid4().hex[:6]}"
        daemon = Daemon(
            prefix=prefix,
            store=tmp_path / f"{prefix}.db",
            log_path=tmp_path / f"{prefix}.log",
            extra_args=list(extra_args),
            amqp_url=amqp,
            test_mode=test_mode,
        )
        made.append(daemon)
        if start:
            daemon.start()
        return daemon

    try:
        yield factory
    finally:
        for daemon in made:
            daemon.stop()
        try:
            for daemon in made:
                cleanup(daemon.prefix)
        finally:
            for daemon in made:
                daemon.check()


@pytest.fixture
def make_daemon(broker: str, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory of daemons on the shared broker."""
    with daemon_factory(tmp_path) as factory:
        yield factory


@pytest.fixture(scope="session")
def rabbit_node() -> Iterator[RabbitNode]:
    """A private RabbitMQ node (plain and TLS listeners) that tests may stop and restart."""
    node = new_node()
    node.start()
    print(f"\nprivate RabbitMQ node {node.name} started in {node.started_in_s:.1f}s")
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def make_node_daemon(rabbit_node: RabbitNode, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory of daemons on the private node (`amqp=` overrides the URL, e.g. a proxy's).

    Afterwards the node is running again, whatever the test did to it, and the daemons'
    queues and exchanges are deleted from it."""

    def cleanup(prefix: str) -> None:
        rabbit_node.ensure_running()
        delete_topology(prefix, rabbit_node.amqp_url, rabbit_node.ctl)

    with daemon_factory(tmp_path, rabbit_node.amqp_url, cleanup) as factory:
        yield factory


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()
