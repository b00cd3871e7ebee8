"""The one error policy for background work, and the one reconnect loop built on it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ojs_amqp.amqp.reconnect import ConnectionLoop, Stopped, backoff_seconds, with_backoff
from ojs_amqp.errors import BackendUnavailable
from ojs_amqp.supervisor import Supervisor


async def _no_pause(_: float) -> None:
    await asyncio.sleep(0)


async def test_a_hook_that_raises_is_logged_and_counted_and_the_next_hook_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: list[str] = []
    supervisor = Supervisor(logging.getLogger("test.supervisor"), counted.append)
    ran: list[str] = []

    async def replay() -> None:
        raise BackendUnavailable("the broker is not connected")

    async def then() -> None:
        ran.append("then")

    ok = await supervisor.run_hooks("after a reconnect", [replay, then])
    assert not ok and ran == ["then"]
    assert supervisor.failures == 1 and counted == ["after a reconnect"]
    assert "after a reconnect" in caplog.text and "the broker is not connected" in caplog.text
    # an expected refusal is a warning, not an error with a traceback
    assert all(r.levelno == logging.WARNING for r in caplog.records)


async def test_an_unexpected_exception_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor(logging.getLogger("test.supervisor"))
    task = supervisor.spawn(_raise(KeyError("boom")), "restore")
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert supervisor.failures == 1 and len(supervisor) == 0
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None


async def test_a_periodic_task_goes_on_after_a_failed_round() -> None:
    supervisor = Supervisor(logging.getLogger("test.supervisor"))
    rounds: list[int] = []
    third = asyncio.Event()

    async def work() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("first round fails")
        if len(rounds) == 3:
            third.set()

    supervisor.periodic(0.001, work, "sweep")
    await asyncio.wait_for(third.wait(), 5)
    await supervisor.close()
    assert supervisor.failures == 1 and len(supervisor) == 0


async def test_cancelling_is_not_a_failure() -> None:
    supervisor = Supervisor(logging.getLogger("test.supervisor"))
    supervisor.spawn(asyncio.sleep(10), "sleeper")
    await supervisor.close()
    assert supervisor.failures == 0


async def _raise(exc: Exception) -> None:
    raise exc


def test_backoff_doubles_to_a_minute_with_a_quarter_of_jitter() -> None:
    assert backoff_seconds(1, lambda: 0.5) == 1.0
    assert backoff_seconds(3, lambda: 0.5) == 4.0
    assert backoff_seconds(30, lambda: 0.5) == 60.0
    assert backoff_seconds(1, lambda: 0.0) == 0.75 and backoff_seconds(1, lambda: 1.0) == 1.25


async def test_with_backoff_retries_what_is_retryable_and_raises_the_last_failure() -> None:
    failures: list[int] = []
    calls = 0

    async def step() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"try {calls}")

    with pytest.raises(ConnectionError, match="try 3"):
        await with_backoff(
            step, retryable=lambda e: isinstance(e, ConnectionError),
            on_failure=lambda n, e, d: failures.append(n), attempts=3, pause=_no_pause,
        )  # fmt: skip
    assert failures == [1, 2]
    with pytest.raises(ValueError):  # not retryable: raised at once

        async def wrong() -> None:
            raise ValueError("no")

        await with_backoff(
            wrong, retryable=lambda e: isinstance(e, ConnectionError),
            on_failure=lambda n, e, d: failures.append(n), pause=_no_pause,
        )  # fmt: skip
    assert failures == [1, 2]
    with pytest.raises(Stopped):
        await with_backoff(step, retryable=lambda e: True, on_failure=lambda n, e, d: None,
                           going_on=lambda: False)  # fmt: skip


async def test_the_loop_reconnects_after_a_hook_failure_and_after_every_loss() -> None:
    """The outbox replay raising after a reconnect must not end the loop: the next loss is
    noticed and reconnected again (the bug tests/faults/test_outbox_replay_flap.py shows)."""
    losses = asyncio.Queue[bool]()
    connects: list[int] = []
    hook_failures: list[BaseException] = []

    async def connect() -> int:
        connects.append(len(connects))
        if len(connects) == 2:
            raise ConnectionError("refused once")
        return len(connects)

    async def serve(session: int) -> bool:
        return await losses.get()

    async def reconnected(session: int) -> None:
        raise BackendUnavailable(f"the link dropped during the replay on session {session}")

    loop: ConnectionLoop[int] = ConnectionLoop(
        connect, serve, retryable=lambda e: isinstance(e, ConnectionError),
        on_failure=lambda n, e, d: None, going_on=lambda: True, reconnected=reconnected,
        on_hook_failure=hook_failures.append, pause=_no_pause,
    )  # fmt: skip
    running = asyncio.ensure_future(loop.run())
    for _ in range(3):
        await losses.put(True)
    await losses.put(False)
    await asyncio.wait_for(running, 5)
    assert loop.reconnections == 3
    assert len(connects) == 5  # the first, a refused one, and three that succeeded
    assert len(hook_failures) == 3
