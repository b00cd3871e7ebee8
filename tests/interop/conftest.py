"""One daemon for the whole interop package; each test keeps to its own queues."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import SESSION_PREFIX
from tests.daemon import Daemon, shared_daemon


@pytest.fixture(scope="package")
def interop_daemon(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("interop")
    with shared_daemon(tmp, f"{SESSION_PREFIX}-i{uuid.uuid4().hex[:8]}") as daemon:
        yield daemon
