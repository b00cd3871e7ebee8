"""A fake clock and scheduler: time moves only when a test calls `advance`."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

#: 2026-03-07T17:00:00Z: any fixed instant will do; this one is easy to read in failures.
DEFAULT_START_MS = 1_772_902_800_000


class FakeTimer:
    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeScheduler:
    """`engine.ports.Scheduler` on fake time. The wall clock and the monotonic clock move
    together; timers fire in due order (ties in the order they were set) as `advance`
    passes them, each followed by the event-loop turns the work it started needs."""

    def __init__(self, start_ms: int = DEFAULT_START_MS) -> None:
        self._start_ms = start_ms
        self._elapsed = 0.0
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return self._start_ms + round(self._elapsed * 1000)

    def monotonic(self) -> float:
        return 1000.0 + self._elapsed

    def call_later(self, delay_s: float, callback: Callable[..., object], *args: Any) -> FakeTimer:
        timer = FakeTimer(self.monotonic() + max(0.0, delay_s), callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.call_later(seconds, _wake, woken)
        await woken

    def pending(self) -> list[float]:
        """When the timers still set will fire (monotonic seconds), soonest first."""
        return sorted(t.when for _, _, t in self._timers if not t.cancelled)

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, firing each timer due on the way at its time."""
        target = self._elapsed + seconds
        await settle()
        while self._timers:
            when, _, timer = self._timers[0]
            if when - 1000.0 > target + 1e-9:
                break
            heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._elapsed = max(self._elapsed, when - 1000.0)
            timer.callback(*timer.args)
            await settle()
        self._elapsed = target
        await settle()


async def settle(turns: int = 50) -> None:
    """Let the event loop run what is ready (spawned steps, deliveries) until it is idle,
    at most `turns` rounds of it."""
    for _ in range(turns):
        await asyncio.sleep(0)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)
