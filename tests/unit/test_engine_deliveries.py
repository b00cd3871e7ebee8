"""Deliveries on the fakes: copy-number checks, adoption, duplicates, and the races of
tests/integration/test_engine_races.py made deterministic (the test decides when each copy
arrives and when each record is written)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.testing.clock import settle
from ojs_amqp.testing.transport import Message
from tests.unit.engine_rig import Rig, engine_rig

pytestmark = pytest.mark.timeout(20)


@contextmanager
def held_record(rig: Rig) -> Iterator[asyncio.Event]:
    """The next store update waits until the event is set: the gap between a move's
    publish and its record, held open."""
    real = rig.store.update
    gate = asyncio.Event()
    calls = 0

    async def update(job: Job, **kwargs: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()
        return await real(job, **kwargs)

    rig.store.update = update  # type: ignore[method-assign]
    try:
        yield gate
    finally:
        rig.store.update = real  # type: ignore[method-assign]


async def test_a_copy_delivered_before_its_move_is_recorded_waits_for_the_record(
    tmp_path: Path,
) -> None:
    async with engine_rig(tmp_path) as rig:
        # Given a pending job in a queue whose gateway is open
        job = await rig.push(pending=True)
        await rig.open()
        with held_record(rig) as gate:
            # When it is activated and its new copy arrives before the record is written
            activating = asyncio.ensure_future(rig.engine.activate(job.id))
            await settle()
            [handle] = await rig.broker.deliver("q")
            # Then the delivery is neither dropped nor buffered yet: it waits
            assert handle.outcome is None
            assert rig.engine.gateway.buffers.sizes() == {}
            gate.set()
            await activating
        await rig.settle()
        # And once recorded, it is buffered and handed out
        [fetched] = await rig.engine.fetch(["q"], 1, "w1", None)
        assert fetched.id == job.id and fetched.state is JobState.ACTIVE


async def test_a_retry_fired_before_its_record_still_comes_back(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push(retry={"max_attempts": 3, "initial_interval": "PT0.001S",
                                    "jitter": False})  # fmt: skip
        await rig.fetch_one()
        with held_record(rig) as gate:
            failing = asyncio.ensure_future(
                rig.engine.nack(job.id, FailureReport(message="boom"), "w1", False)
            )
            await settle()
            # The retry's timer reaches the due queue before the record
            [timer] = await rig.broker.deliver_due()
            assert timer.outcome is None and len(rig.engine.timers) == 0
            gate.set()
            assert (await failing).state is JobState.RETRYABLE
        await rig.settle()  # the deferred delivery runs now: the timer is held
        await rig.advance(0.01)
        await rig.settle()
        assert (await rig.stored(job.id)).state is JobState.AVAILABLE
        assert timer.outcome == "acked"
        again = await rig.fetch_one()
        assert (again.id, again.attempt) == (job.id, 2)


async def test_a_stale_copy_is_acked_and_dropped(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.open()
        [first] = rig.transport.delivered
        stale = Message(job.id, job.copy - 1 if job.copy > 1 else 0, b"{}", "q")
        handle = await rig.broker.deliver_message(stale)
        assert handle.outcome == "acked"
        assert rig.engine.gateway.buffers.sizes() == {"q": 1}
        assert first[2].outcome is None


async def test_two_copies_of_one_job_keep_the_newest_buffered(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.open()
        [(_, message, first)] = rig.transport.delivered
        again = Message(message.job_id, message.copy, message.body, "q")
        second = await rig.broker.deliver_message(again)
        assert first.outcome == "acked" and second.outcome is None
        assert rig.engine.gateway.buffers.sizes() == {"q": 1}
        [leased] = await rig.engine.fetch(["q"], 1, "w1", None)
        assert leased.id == job.id


async def test_a_job_published_by_another_client_is_adopted(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        await rig.open()
        body = orjson.dumps({"type": "ext.job", "args": [1], "created_at": "2020-01-01T00:00:00Z"})
        rig.broker.inject("q", body, job_id="third-party-1")
        [handle] = await rig.broker.deliver("q")
        stored = await rig.stored("third-party-1")
        assert (stored.state, stored.queue, stored.type) == (JobState.AVAILABLE, "q", "ext.job")
        assert handle.outcome is None  # buffered for a FETCH
        assert rig.event_types() == ["job.enqueued"]
        [leased] = await rig.engine.fetch(["q"], 1, "w1", None)
        assert leased.id == "third-party-1"


async def test_an_invalid_message_on_a_job_queue_is_dead_lettered(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        await rig.open()
        rig.broker.inject("q", b"not json", job_id="x")
        [handle] = await rig.broker.deliver("q")
        assert handle.outcome == "rejected"
        assert await rig.store.get("x") is None


async def test_a_copy_of_a_cancelled_job_is_acked_not_buffered(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.engine.queues.ensure("q")
        await rig.engine.cancel(job.id)
        assert rig.transport.kinds() == ["available", "cancel"]
        rig.engine.gateway.open["q"] = rig.clock.monotonic()
        await rig.transport.consume_jobs("q", rig.engine.gateway._handler_for("q"))
        [handle] = await rig.broker.deliver("q")
        assert handle.outcome == "acked"
        assert rig.engine.gateway.buffers.sizes() == {}


async def test_a_returned_copy_is_renewed_so_returns_never_add_up(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.open()
        [(_, message, first)] = rig.transport.delivered
        rig.broker.lose_job_consumer("q")
        assert first.void and message.returns == 1
        # When the broker delivers it again (counted once)
        [again] = await rig.broker.deliver("q")
        # Then a fresh copy replaces it (published, recorded, this one acked)
        assert again.outcome == "acked"
        assert rig.transport.kinds() == ["available", "available"]
        assert (await rig.stored(job.id)).copy == job.copy + 1
        assert rig.metric('ojs_amqp_deliveries_renewed_total{reason="redelivered"}') == 1
        [fresh] = await rig.broker.deliver("q")
        assert fresh.outcome is None
        assert rig.engine.gateway.buffers.sizes() == {"q": 1}


async def test_a_lease_found_after_a_restart_expires_and_is_counted(tmp_path: Path) -> None:
    # Given a job leased by a daemon that then stopped (its lease is gone with it)
    async with engine_rig(tmp_path) as first:
        job = await first.push(retry={"max_attempts": 3})
        await first.fetch_one()
        [(_, message, _)] = first.transport.delivered
    # When a new daemon on the same store receives the copy again (the broker returned it)
    async with engine_rig(tmp_path) as rig:
        await rig.open()
        message.returns = 1
        handle = await rig.broker.deliver_message(message)
        await rig.settle()
        # Then the lease counts as expired (a visibility timeout) and the job goes back
        stored = await rig.stored(job.id)
        assert (stored.state, stored.copy) == (JobState.AVAILABLE, job.copy + 1)
        assert handle.outcome == "acked"
        assert rig.metric('ojs_lease_expired_total{kind="visibility"') == 1


async def test_a_lease_timer_of_a_dead_daemon_returns_its_job(tmp_path: Path) -> None:
    async with engine_rig(tmp_path, delivery_hold_ms=5_000) as first:
        job = await first.push()
        await first.fetch_one(visibility_ms=60_000)
        await first.advance(5.1)  # handed over: a lease timer on the ladder
        await first.settle()
        [timer] = first.transport.ladder
    async with engine_rig(tmp_path) as rig:
        rig.clock._elapsed = 60.0  # the new daemon lives after the deadline
        handles = await rig.broker.deliver_due(timer)
        await rig.settle()
        await rig.advance(0.01)
        await rig.settle()
        assert (await rig.stored(job.id)).state is JobState.AVAILABLE
        assert handles[0].outcome == "acked"
        assert rig.metric('ojs_lease_expired_total{kind="visibility"') == 1
