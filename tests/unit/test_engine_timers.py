"""Timers on the fakes: scheduled jobs and retry backoffs ride the ladder, are held when
close, fire at their millisecond by the one move rule, and survive the broker's returns."""

from __future__ import annotations

from pathlib import Path

import pytest

from ojs_amqp.core.job import JobState
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.core.times import format_ms
from ojs_amqp.errors import BackendUnavailable
from tests.unit.engine_rig import Rig, engine_rig

pytestmark = pytest.mark.timeout(20)


async def _scheduled(rig: Rig, in_ms: int) -> str:
    job = await rig.push(scheduled_at=format_ms(rig.clock.now_ms() + in_ms))
    assert job.state is JobState.SCHEDULED
    return job.id


async def test_a_scheduled_job_is_parked_then_held_then_fired_on_time(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job_id = await _scheduled(rig, 1_500)
        [parked] = rig.transport.ladder
        assert (parked.job_id, parked.due_at_ms) == (job_id, rig.clock.now_ms() + 1_500)
        # When the due queue delivers it (1.5 s early: short enough to hold)
        [handle] = await rig.broker.deliver_due()
        assert len(rig.engine.timers) == 1 and handle.outcome is None
        # Then it fires at its time, not before
        await rig.advance(1.4)
        assert (await rig.stored(job_id)).state is JobState.SCHEDULED
        await rig.advance(0.1)
        await rig.settle()
        stored = await rig.stored(job_id)
        assert (stored.state, stored.copy) == (JobState.AVAILABLE, 2)
        assert handle.outcome == "acked"
        assert rig.transport.kinds() == ["parked", "available"]
        assert len(rig.engine.timers) == 0


async def test_a_timer_back_early_from_a_long_level_rides_the_ladder_again(
    tmp_path: Path,
) -> None:
    async with engine_rig(tmp_path) as rig:
        job_id = await _scheduled(rig, 60_000)
        [handle] = await rig.broker.deliver_due()
        assert handle.outcome == "acked"
        assert rig.transport.kinds() == ["parked", "reparked"]
        assert (await rig.stored(job_id)).state is JobState.SCHEDULED
        assert len(rig.engine.timers) == 0


async def test_a_timer_the_broker_returned_is_published_afresh_not_held(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        await _scheduled(rig, 1_000)
        [message] = list(rig.transport.ladder)
        message.returns = 1  # went back to the due queue once (a lost channel)
        [handle] = await rig.broker.deliver_due()
        assert handle.outcome == "acked"
        assert rig.transport.kinds() == ["parked", "reparked"]
        assert rig.transport.ladder[0].returns == 0  # a fresh message


async def test_a_stale_timer_is_dropped(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job_id = await _scheduled(rig, 1_000)
        [message] = list(rig.transport.ladder)
        await rig.engine.cancel(job_id)
        [handle] = await rig.broker.deliver_due()
        await rig.advance(1.1)
        await rig.settle()
        assert handle.outcome == "acked"
        assert (await rig.stored(job_id)).state is JobState.CANCELLED
        assert "available" not in rig.transport.kinds()
        assert message.job_id == job_id


async def test_a_timer_that_cannot_fire_is_held_and_tried_again(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job_id = await _scheduled(rig, 500)
        [handle] = await rig.broker.deliver_due()
        rig.transport.refuse = BackendUnavailable("away")
        await rig.advance(0.6)
        await rig.settle()
        assert (await rig.stored(job_id)).state is JobState.SCHEDULED
        assert handle.outcome is None and len(rig.engine.timers) == 1
        rig.transport.refuse = None
        await rig.advance(1.0)
        await rig.settle()
        assert (await rig.stored(job_id)).state is JobState.AVAILABLE
        assert handle.outcome == "acked"


async def test_a_timer_of_a_job_past_its_expiry_expires_it(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        now = rig.clock.now_ms()
        job = await rig.push(scheduled_at=format_ms(now + 1_000),
                             expires_at=format_ms(now + 500))  # fmt: skip
        await rig.broker.deliver_due()
        await rig.advance(1.1)
        await rig.settle()
        assert (await rig.stored(job.id)).state is JobState.DISCARDED
        assert "job.expired" in rig.event_types()


async def test_a_retry_backoff_fires_and_the_job_is_available_again(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push(retry={"max_attempts": 3, "initial_interval": "PT1S",
                                    "jitter": False})  # fmt: skip
        await rig.fetch_one()
        failed = await rig.engine.nack(job.id, FailureReport(message="boom"), "w1", False)
        assert failed.state is JobState.RETRYABLE
        assert failed.next_attempt_at_ms is not None
        delay_s = (failed.next_attempt_at_ms - rig.clock.now_ms()) / 1000
        await rig.broker.deliver_due()
        await rig.advance(delay_s + 0.01)
        await rig.settle()
        stored = await rig.stored(job.id)
        assert stored.state is JobState.AVAILABLE and stored.attempt == 1
        assert rig.metric("ojs_schedule_lateness_seconds_count") == 1


async def test_losing_the_due_consumer_lets_go_of_held_timers_until_redelivered(
    tmp_path: Path,
) -> None:
    async with engine_rig(tmp_path) as rig:
        job_id = await _scheduled(rig, 1_000)
        [first] = await rig.broker.deliver_due()
        rig.broker.lose_due_consumer()
        assert len(rig.engine.timers) == 0 and first.void
        # When the broker delivers it again (counted once): published afresh, then held
        [again] = await rig.broker.deliver_due()
        assert again.outcome == "acked"
        [fresh] = await rig.broker.deliver_due()
        await rig.advance(1.1)
        await rig.settle()
        assert fresh.outcome == "acked"
        assert (await rig.stored(job_id)).state is JobState.AVAILABLE
