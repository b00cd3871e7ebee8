"""The engine's background work: steps spawned from timers, and periodic loops, with one
error policy (an OjsError is a warning, anything else an error with its traceback; the loop
or the other steps go on)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ojs_amqp.engine.ports import Scheduler
from ojs_amqp.errors import OjsError

log = logging.getLogger("ojs_amqp.engine")


class Tasks:
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._steps: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._steps.add(task)
        task.add_done_callback(self._step_done)

    def _step_done(self, task: asyncio.Task[Any]) -> None:
        self._steps.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, OjsError):
                log.warning("background step failed: %s", exc.message)
            else:
                log.error("background step failed", exc_info=exc)

    def every(
        self, seconds: float, work: Callable[[], Coroutine[Any, Any, Any]], name: str
    ) -> None:
        self._loops.append(asyncio.create_task(self._every(seconds, work), name=name))

    async def _every(self, seconds: float, work: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        while True:
            await self._scheduler.sleep(seconds)
            try:
                await work()
            except OjsError as exc:
                log.warning("%s failed: %s", getattr(work, "__name__", work), exc.message)
            except Exception:
                log.exception("%s failed", getattr(work, "__name__", work))

    async def stop_loops(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []

    async def idle(self) -> None:
        """Until every spawned step is done (tests on a fake clock)."""
        while self._steps:
            await asyncio.gather(*list(self._steps), return_exceptions=True)
