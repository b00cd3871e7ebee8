"""The one backoff loop (binding AMQP-025) and the one reconnecting-connection loop.

The daemon's Broker and the SDK's worker and client all keep a link to the broker up the
same way: try, and after a failure worth retrying wait 1 s doubling to 60 s with +-25%
jitter; once connected, serve until the link is lost, then connect again. The hooks that
follow a reconnect (the daemon replays its outbox) run under a Supervisor: one that fails is
logged and counted, and the loop goes on waiting for the next loss. Before, a hook's
exception ended the daemon's reconnect loop for good (tests/faults/test_outbox_replay_flap.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
S = TypeVar("S")

#: Told what failed: (attempt number, the error, seconds until the next attempt).
OnFailure = Callable[[int, BaseException, float], None]


class Stopped(Exception):
    """The loop was told to stop (`going_on()` turned false) before a try succeeded."""


def backoff_seconds(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """1 s doubling to 60 s, +-25% jitter (binding AMQP-025)."""
    base = min(2.0 ** max(0, attempt - 1), 60.0)
    return base * (0.75 + 0.5 * rng())


async def with_backoff(
    step: Callable[[], Awaitable[T]],
    *,
    retryable: Callable[[BaseException], bool],
    on_failure: OnFailure,
    attempts: int | None = None,
    going_on: Callable[[], bool] = lambda: True,
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
    first_attempt: int = 1,
) -> T:
    """`await step()` until it succeeds. A failure that is not `retryable`, or the last of
    `attempts` (None: no limit), is raised; the others are told to `on_failure` and waited
    out with `backoff_seconds`. Raises Stopped once `going_on()` is false before a try."""
    attempt = first_attempt - 1
    while True:
        if not going_on():
            raise Stopped
        attempt += 1
        try:
            return await step()
        except Exception as exc:
            if not retryable(exc) or (attempts is not None and attempt >= attempts):
                raise
            delay = backoff_seconds(attempt)
            on_failure(attempt, exc, delay)
            await pause(delay)


class ConnectionLoop(Generic[S]):
    """Connect with backoff, serve the link until it is lost, connect again; until stopped.

    `connect()` opens a session (a connection and what runs on it); `serve(session)` returns
    True when the link was lost (reconnect) and False when the owner stopped it (end the
    loop). `reconnected(session)` runs after every connect but the first; what it raises
    is handed to `on_hook_failure` and never ends the loop."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[S]],
        serve: Callable[[S], Awaitable[bool]],
        *,
        retryable: Callable[[BaseException], bool],
        on_failure: OnFailure,
        going_on: Callable[[], bool],
        reconnected: Callable[[S], Awaitable[None]] | None = None,
        on_hook_failure: Callable[[BaseException], None] | None = None,
        pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
        logger: logging.Logger | None = None,
        reconnect_from: int = 1,
    ) -> None:
        self._connect = connect
        self._serve = serve
        self._retryable = retryable
        self._on_failure = on_failure
        self._going_on = going_on
        self._reconnected = reconnected
        self._on_hook_failure = on_hook_failure
        self._pause = pause
        self._log = logger or logging.getLogger("ojs_amqp.reconnect")
        #: The attempt number (for the backoff) of the first try after a loss.
        self._reconnect_from = reconnect_from
        #: Successful connects after the first.
        self.reconnections = 0

    async def run(self) -> None:
        """Connect (with backoff), then `keep` the link; return once stopped."""
        try:
            session = await self._connected(1)
        except Stopped:
            return
        await self.keep(session)

    async def keep(self, session: S) -> None:
        """Serve `session`, already connected; after each loss connect again and run
        `reconnected`; return once stopped."""
        while await self._serve(session):
            try:
                session = await self._connected(self._reconnect_from)
            except Stopped:
                return
            self.reconnections += 1
            await self._after_reconnect(session)

    async def _connected(self, first_attempt: int) -> S:
        return await with_backoff(
            self._connect, retryable=self._retryable, on_failure=self._on_failure,
            going_on=self._going_on, pause=self._pause, first_attempt=first_attempt,
        )  # fmt: skip

    async def _after_reconnect(self, session: S) -> None:
        if self._reconnected is None:
            return
        try:
            await self._reconnected(session)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the policy is the owner's; the loop lives on
            if self._on_hook_failure is not None:
                self._on_hook_failure(exc)
            else:
                self._log.error("after a reconnect: %r", exc, exc_info=exc)
