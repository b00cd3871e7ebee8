"""Leases on the fakes: visibility and execution timeouts, heartbeats, the handover to a
ladder timer, and the one path every lost lease ends through (counted once each way)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ojs_amqp.core.job import JobState
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.errors import BackendUnavailable, Conflict
from tests.unit.engine_rig import engine_rig

pytestmark = pytest.mark.timeout(20)


def _expired(rig: object, kind: str = "visibility") -> float:
    return rig.metric(f'ojs_lease_expired_total{{kind="{kind}"')  # type: ignore[attr-defined]


async def test_a_lease_past_its_visibility_timeout_goes_back_to_its_queue(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        # Given a job leased with a 30 s visibility timeout
        job = await rig.push(retry={"max_attempts": 3})
        leased = await rig.fetch_one(visibility_ms=30_000)
        assert leased.state is JobState.ACTIVE
        # When 29 s pass, nothing happens; at 30 s the lease expires
        await rig.advance(29)
        assert (await rig.stored(job.id)).state is JobState.ACTIVE
        await rig.advance(1.01)
        await rig.settle()
        # Then the job is available again as a new copy (attempts left: no backoff), counted
        # once, its old delivery acked after the new copy was published
        stored = await rig.stored(job.id)
        assert (stored.state, stored.copy) == (JobState.AVAILABLE, job.copy + 1)
        assert stored.error is not None and stored.error["code"] == "visibility_timeout"
        assert _expired(rig) == 1
        assert [h.outcome for h in rig.handles(job.id)] == ["acked"]
        assert rig.transport.kinds() == ["available", "available"]


async def test_a_heartbeat_pushes_the_visibility_deadline_out(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.fetch_one(visibility_ms=10_000)
        # When the worker beats every 8 s for 40 s
        for _ in range(5):
            await rig.advance(8)
            directive, extended = await rig.engine.heartbeat("w1", [job.id], None)
            assert (directive, extended) == ("running", [job.id])
        # Then the lease never expired
        assert (await rig.stored(job.id)).state is JobState.ACTIVE
        assert _expired(rig) == 0
        # And once the beats stop, it expires 10 s after the last
        await rig.advance(9.9)
        assert (await rig.stored(job.id)).state is JobState.ACTIVE
        await rig.advance(0.2)
        await rig.settle()
        assert (await rig.stored(job.id)).state is not JobState.ACTIVE


async def test_a_heartbeat_from_another_worker_extends_nothing(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.fetch_one(worker="w1")
        _, extended = await rig.engine.heartbeat("w2", [job.id], None)
        assert extended == []


async def test_the_execution_timeout_ends_a_lease_even_with_heartbeats(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push(timeout_ms=20_000)
        await rig.fetch_one(visibility_ms=10_000)
        for _ in range(3):
            await rig.advance(7)
            await rig.engine.heartbeat("w1", [job.id], None)
            await rig.settle()
        assert (await rig.stored(job.id)).state is not JobState.ACTIVE
        assert _expired(rig, "timeout") == 1
        assert _expired(rig) == 0


async def test_an_expiry_while_the_broker_is_away_is_tried_again(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.fetch_one(visibility_ms=5_000)
        # Given the broker refuses every publish when the lease runs out
        rig.transport.refuse = BackendUnavailable("broker away")
        await rig.advance(5.1)
        await rig.settle()
        # Then the job stays active, with its lease still held (nothing lost)
        assert (await rig.stored(job.id)).state is JobState.ACTIVE
        assert job.id in rig.engine.leases
        # When the broker is back, the retry a second later expires it
        rig.transport.refuse = None
        await rig.advance(1.1)
        await rig.settle()
        assert (await rig.stored(job.id)).state is JobState.AVAILABLE
        assert job.id not in rig.engine.leases
        assert _expired(rig) == 1


async def test_a_lease_held_past_delivery_hold_is_handed_over_to_a_ladder_timer(
    tmp_path: Path,
) -> None:
    async with engine_rig(tmp_path, delivery_hold_ms=60_000) as rig:
        job = await rig.push()
        await rig.fetch_one(visibility_ms=300_000)
        [handle] = rig.handles(job.id)
        assert handle.outcome is None
        # When the delivery has been held for delivery_hold_ms
        await rig.advance(60.1)
        await rig.settle()
        # Then a lease timer is parked at the deadline and the delivery acked; still active
        parked = [p for p in rig.transport.published if p.kind == "parked"]
        assert [(p.job_id, p.copy) for p in parked] == [(job.id, job.copy)]
        assert parked[0].due_at_ms == rig.clock.now_ms() + 240_000 - 100
        assert handle.outcome == "acked"
        lease = rig.engine.leases.get(job.id)
        assert lease is not None and lease.message is None
        assert (await rig.stored(job.id)).state is JobState.ACTIVE


async def test_a_handed_over_lease_still_expires_on_its_own_timer(tmp_path: Path) -> None:
    async with engine_rig(tmp_path, delivery_hold_ms=10_000) as rig:
        job = await rig.push()
        await rig.fetch_one(visibility_ms=30_000)
        await rig.advance(10.1)
        await rig.settle()
        await rig.advance(20)
        await rig.settle()
        assert (await rig.stored(job.id)).state is not JobState.ACTIVE
        assert _expired(rig) == 1


async def test_an_ack_ends_the_lease_and_its_timer(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.fetch_one(visibility_ms=5_000)
        done = await rig.engine.ack(job.id, {"ok": 1}, "w1")
        assert done.state is JobState.COMPLETED
        await rig.advance(10)
        await rig.settle()
        assert (await rig.stored(job.id)).state is JobState.COMPLETED
        assert _expired(rig) == 0
        assert rig.metric("ojs_job_completed_total") == 1


async def test_an_ack_from_another_worker_is_refused(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.fetch_one(worker="w1")
        with pytest.raises(Conflict, match="leased to worker w1"):
            await rig.engine.ack(job.id, None, "w2")


async def test_a_nack_with_requeue_makes_the_job_available_without_a_failure(
    tmp_path: Path,
) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.fetch_one()
        back = await rig.engine.nack(job.id, FailureReport(message="x"), "w1", requeue=True)
        assert back.state is JobState.AVAILABLE
        assert "job.failed" not in rig.event_types()
        assert [p.kind for p in rig.transport.published] == ["available", "available"]


async def test_a_nack_without_requeue_parks_the_retry(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push(retry={"max_attempts": 3})
        await rig.fetch_one()
        failed = await rig.engine.nack(job.id, FailureReport(message="boom"), "w1", False)
        assert failed.state is JobState.RETRYABLE
        assert rig.transport.kinds() == ["available", "parked"]
        assert job.id not in rig.engine.leases


async def test_the_last_attempt_expiring_discards_the_job(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push(retry={"max_attempts": 1})
        await rig.fetch_one(visibility_ms=1_000)
        await rig.advance(1.1)
        await rig.settle()
        assert (await rig.stored(job.id)).state is JobState.DISCARDED
        assert rig.transport.kinds()[-1] == "discarded"
        assert "job.discarded" in rig.event_types()
