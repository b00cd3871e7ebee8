"""The engine's background work: steps spawned from timers, and periodic loops, on the
shared `Supervisor` (one error policy for the whole daemon: an OjsError is a warning,
anything else an error with its traceback, each counted in ojs_background_failures_total;
the loop or the other steps go on), sleeping on the engine's scheduler (a fake clock in
unit tests)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ojs_amqp.engine.ports import Scheduler
from ojs_amqp.supervisor import Supervisor

log = logging.getLogger("ojs_amqp.engine")


class Tasks:
    def __init__(
        self, scheduler: Scheduler, on_failure: Callable[[str], None] | None = None
    ) -> None:
        self._supervisor = Supervisor(log, on_failure, sleep=scheduler.sleep)
        self._loops: list[asyncio.Task[None]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._supervisor.spawn(coro, "engine step")

    def every(
        self, seconds: float, work: Callable[[], Coroutine[Any, Any, Any]], name: str
    ) -> None:
        self._loops.append(self._supervisor.periodic(seconds, work, name))

    async def stop_loops(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []

    async def idle(self) -> None:
        """Until every spawned step is done (tests on a fake clock)."""
        while steps := [t for t in self._supervisor.running() if t not in self._loops]:
            await asyncio.gather(*steps, return_exceptions=True)
