"""In-process engines on the real broker, for tests that need to reach inside the daemon."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ojs_amqp.amqp.broker import Broker
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.amqp.transport import AmqpTransport
from ojs_amqp.engine.events import EventLog
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.metrics import Metrics
from ojs_amqp.settings import Settings
from ojs_amqp.store.sqlite import SqliteJobStore
from tests.conftest import SESSION_PREFIX
from tests.daemon import Daemon, shared_daemon
from tests.integration.admin_stores import STORES, daemons_on

NY = ZoneInfo("America/New_York")


class FakeClock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def set(self, dt: datetime) -> None:
        self.ms = int(dt.timestamp() * 1000)


@contextlib.asynccontextmanager
async def running_engine(
    amqp_url: str, tmp_path: Path, clock: Callable[[], int]
) -> AsyncIterator[JobEngine]:
    """A JobEngine with its own topology prefix and store; everything deleted afterwards."""
    prefix = f"{SESSION_PREFIX}-eng-{uuid.uuid4().hex[:6]}"
    store = SqliteJobStore(str(tmp_path / f"{prefix}.db"))
    await store.open()
    bus = Broker(amqp_url, Topology(prefix))
    await bus.start(attempts=3)
    settings = Settings(prefix=prefix)
    transport = AmqpTransport(bus, settings.prefetch)
    engine = JobEngine(settings, store, transport, EventLog(), Metrics(), clock=clock)
    try:
        await engine.start()
        yield engine
    finally:
        await engine.close()
        await bus.delete_everything()
        await bus.close()
        await store.close()


@pytest.fixture
async def engine(broker: str, tmp_path: Path) -> AsyncIterator[tuple[JobEngine, FakeClock]]:
    """An engine on a fake clock, starting 2026-03-07 12:00 New York time."""
    clock = FakeClock(int(datetime(2026, 3, 7, 12, 0, tzinfo=NY).timestamp() * 1000))
    async with running_engine(broker, tmp_path, clock) as eng:
        yield eng, clock


@pytest.fixture
async def live_engine(broker: str, tmp_path: Path) -> AsyncIterator[JobEngine]:
    """An engine on the wall clock."""
    async with running_engine(broker, tmp_path, lambda: time.time_ns() // 1_000_000) as eng:
        yield eng


@pytest.fixture(scope="module")
def module_daemon(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon shared by a whole module, for tests that only need it up (and keep to
    their own queues)."""
    tmp = tmp_path_factory.mktemp("module-daemon")
    with shared_daemon(tmp, f"{SESSION_PREFIX}-m{uuid.uuid4().hex[:8]}") as daemon:
        yield daemon


@pytest.fixture(params=STORES)
def make_store_daemon(
    request: pytest.FixtureRequest, broker: str, tmp_path: Path
) -> Iterator[Callable[..., Daemon]]:
    """`make_daemon`, once on each store."""
    with daemons_on(request.param, tmp_path) as factory:
        yield factory
