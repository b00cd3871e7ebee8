from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.daemon import AMQP_URL, Daemon, delete_topology

SESSION_PREFIX = f"t{uuid.uuid4().hex[:8]}"


def _broker_reachable() -> bool:
    parts = urlsplit(AMQP_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def broker() -> str:
    """The broker URL; integration tests fail in CI (and skip locally) without a broker."""
    if not _broker_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"RabbitMQ is not reachable at {AMQP_URL}")
        pytest.skip(f"RabbitMQ is not reachable at {AMQP_URL}")
    return AMQP_URL


@pytest.fixture
def make_daemon(
    broker: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Daemon]]:
    """Factory: each daemon gets its own topology prefix and store; both vanish afterwards."""
    made: list[Daemon] = []

    def factory(*extra_args: str) -> Daemon:
        prefix = f"{SESSION_PREFIX}-{len(made)}-{uuid.uuid4().hex[:6]}"
        daemon = Daemon(
            prefix=prefix,
            store=tmp_path / f"{prefix}.db",
            log_path=tmp_path / f"{prefix}.log",
            extra_args=list(extra_args),
        )
        daemon.start()
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        daemon.stop()
        delete_topology(daemon.prefix)


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()
