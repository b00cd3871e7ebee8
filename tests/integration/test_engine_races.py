"""Races inside the engine, made deterministic by slowing one step down."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.engine.jobs import JobEngine


def _slow_record(engine: JobEngine, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delay the next store update only, widening the gap between a publish and its record."""
    real_update = engine.store.update
    calls = 0

    async def slow_update(job: Job, **kwargs: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(seconds)
        return await real_update(job, **kwargs)

    monkeypatch.setattr(engine.store, "update", slow_update)


async def test_a_copy_delivered_before_its_move_is_recorded_is_not_lost(
    live_engine: JobEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a pending job and a worker already waiting in FETCH
    job = await live_engine.push(
        {"type": "race.activate", "args": [], "options": {"pending": True}}
    )
    waiting = asyncio.create_task(live_engine.fetch(["default"], 1, "w1", None))
    await asyncio.sleep(0.05)

    # When it is activated while recording is slow, so its copy arrives before the record
    _slow_record(live_engine, 0.3, monkeypatch)
    await live_engine.activate(job.id)

    # Then the job is still handed out (now or on the next fetch), never dropped
    fetched = await waiting or await live_engine.fetch(["default"], 1, "w1", None)
    assert [j.id for j in fetched] == [job.id]
    stored = await live_engine.store.get(job.id)
    assert stored is not None and stored.state is JobState.ACTIVE


async def test_a_retry_fired_before_its_record_still_comes_back(
    live_engine: JobEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ojs_amqp.core.retry import FailureReport

    # Given an active job whose retry is due at once
    pushed = await live_engine.push(
        {"type": "race.retry", "args": [],
         "options": {"retry": {"max_attempts": 3, "initial_interval": "PT0.001S", "jitter": False}}}
    )  # fmt: skip
    [leased] = await live_engine.fetch(["default"], 1, "w1", None)
    assert leased.id == pushed.id

    # When it fails while recording is slow (the due copy reaches the timer before the record)
    _slow_record(live_engine, 0.3, monkeypatch)
    failed = await live_engine.nack(pushed.id, FailureReport(message="boom"), "w1", False)
    assert failed.state is JobState.RETRYABLE

    # Then it becomes available again and is fetched for attempt 2
    again: list[Job] = []
    for _ in range(10):
        again = await live_engine.fetch(["default"], 1, "w1", None)
        if again:
            break
    assert [(j.id, j.attempt) for j in again] == [(pushed.id, 2)]
