from types import SimpleNamespace

import pytest

from ojs_amqp.cli import parse_max_depth
from ojs_amqp.engine import backpressure
from ojs_amqp.engine.backpressure import DepthCache
from ojs_amqp.settings import Settings


def test_max_depth_takes_a_default_and_per_queue_bounds() -> None:
    settings = Settings(max_depth=parse_max_depth("1000, email=50"))
    assert settings.max_depth_for("email") == 50
    assert settings.max_depth_for("other") == 1000
    assert Settings().max_depth_for("any") == 0  # unbounded


def test_a_malformed_max_depth_stops_the_daemon_with_a_message() -> None:
    with pytest.raises(SystemExit, match="N or QUEUE=N"):
        parse_max_depth("email=lots")


class CountingStore:
    def __init__(self) -> None:
        self.count = 5
        self.reads = 0

    async def open_jobs(self, queue: str) -> int:
        self.reads += 1
        return self.count


async def test_the_depth_is_read_once_a_second_and_pushes_are_added_on_top() -> None:
    store = CountingStore()
    depths = DepthCache(store)  # type: ignore[arg-type]
    assert await depths.depth("q") == 5
    depths.pushed("q")
    depths.pushed("q")
    store.count = 1  # jobs finished meanwhile: not seen until the next read
    assert await depths.depth("q") == 7
    assert store.reads == 1
    depths.clear()
    assert await depths.depth("q") == 1


async def test_the_depth_is_read_again_once_a_second_has_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one-second refresh on a fake clock: cached before, read from the store after."""
    now = [100.0]
    monkeypatch.setattr(backpressure, "time", SimpleNamespace(monotonic=lambda: now[0]))
    store = CountingStore()
    depths = DepthCache(store)  # type: ignore[arg-type]
    assert await depths.depth("q") == 5
    store.count = 1
    now[0] += backpressure.REFRESH_S - 0.001
    assert await depths.depth("q") == 5 and store.reads == 1
    now[0] += 0.002
    assert await depths.depth("q") == 1 and store.reads == 2
