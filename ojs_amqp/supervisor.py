"""Background tasks with one error policy: spawned, run periodically, or called as hooks.

A task the event loop holds only weakly can vanish, and one whose exception nobody reads
fails silently: the broker's reconnect loop once ended for good that way, on an exception
from a hook it awaited. Everything a component runs in the background goes through its
Supervisor instead, which keeps a reference until the task ends and applies one policy to a
failure: an OjsError (an expected refusal, such as "the broker is not connected") is one
warning line with its message, anything else is logged with its traceback; either way the
failure is counted (`failures`, and `on_failure(task name)` for a metric) and never ends the
loop or the caller that ran it. Cancellation is not a failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from ojs_amqp.errors import OjsError

T = TypeVar("T")


class Supervisor:
    """The background tasks of one component (the broker, a worker's session, the engine)."""

    def __init__(
        self,
        logger: logging.Logger,
        on_failure: Callable[[str], None] | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._log = logger
        self._on_failure = on_failure
        self._sleep = sleep  # a fake clock's, in tests
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Failures counted so far (tests and stats read it).
        self.failures = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def failed(self, what: str, exc: BaseException, detail: str = "") -> None:
        """The policy: log once, count, tell `on_failure(what)`; the caller carries on.
        `detail` (which hook) goes into the log line only, not into the metric's label."""
        self.failures += 1
        where = f"{what} ({detail})" if detail else what
        if isinstance(exc, OjsError):
            self._log.warning("%s failed: %s", where, exc.message)
        else:
            self._log.error("%s failed", where, exc_info=exc)
        if self._on_failure is not None:
            self._on_failure(what)

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run `coro` as a task held until it ends; a failure goes to `failed`."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failed(task.get_name(), exc)

    def periodic(
        self, seconds: float, work: Callable[[], Awaitable[Any]], name: str
    ) -> asyncio.Task[None]:
        """Run `work` every `seconds` (after each wait) until cancelled; a failed round is
        handled by the policy and the next round runs as planned."""

        async def every() -> None:
            while True:
                await self._sleep(seconds)
                await self.guarded(name, work())

        return self.spawn(every(), name)

    async def guarded(self, what: str, call: Awaitable[T]) -> T | None:
        """`await call`; on failure apply the policy and return None."""
        try:
            return await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed(what, exc)
            return None

    async def run_hooks(
        self, what: str, hooks: Iterable[Callable[..., Awaitable[None]]], *args: Any
    ) -> bool:
        """Await each hook in turn; one that raises is handled by the policy and the next
        still runs. True when every hook succeeded."""
        ok = True
        for hook in list(hooks):
            try:
                await hook(*args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(what, exc, _name_of(hook))
                ok = False
        return ok

    def call_hooks(self, what: str, hooks: Iterable[Callable[..., None]], *args: Any) -> bool:
        """As `run_hooks`, for plain callbacks."""
        ok = True
        for hook in list(hooks):
            try:
                hook(*args)
            except Exception as exc:
                self.failed(what, exc, _name_of(hook))
                ok = False
        return ok

    def running(self) -> list[asyncio.Task[Any]]:
        """The tasks not ended yet."""
        return list(self._tasks)

    def cancel(self) -> list[asyncio.Task[Any]]:
        """Cancel every task; returns them (await them with `close`)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        return tasks

    async def close(self) -> None:
        """Cancel every task and wait until they have all ended."""
        tasks = self.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _name_of(hook: Callable[..., Any]) -> str:
    return str(getattr(hook, "__qualname__", None) or getattr(hook, "__name__", repr(hook)))
