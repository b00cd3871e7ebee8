"""Commands, admission, progress and queue deletes on the fakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ojs_amqp.core.job import JobState
from ojs_amqp.core.progress import ProgressUpdate
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.errors import Conflict, QueueFull, QueueNotEmpty
from tests.unit.engine_rig import engine_rig

pytestmark = pytest.mark.timeout(20)


async def test_cancelling_a_leased_job_acks_its_delivery_and_ends_the_lease(
    tmp_path: Path,
) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.fetch_one(visibility_ms=5_000)
        cancelled = await rig.engine.cancel(job.id)
        assert cancelled.state is JobState.CANCELLED
        assert [h.outcome for h in rig.handles(job.id)] == ["acked"]
        assert job.id not in rig.engine.leases
        assert "cancel" not in rig.transport.kinds()  # held here: no native worker has it
        await rig.advance(6)
        await rig.settle()
        assert (await rig.stored(job.id)).state is JobState.CANCELLED


async def test_cancelling_a_job_not_held_here_tells_native_workers(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.engine.cancel(job.id)
        assert rig.transport.kinds() == ["available", "cancel"]
        with pytest.raises(Conflict, match="already cancelled"):
            await rig.engine.cancel(job.id)


async def test_cancelling_a_buffered_job_releases_its_delivery(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.open()
        await rig.engine.cancel(job.id)
        assert [h.outcome for h in rig.handles(job.id)] == ["acked"]
        assert rig.engine.gateway.buffers.sizes() == {}
        assert await rig.engine.fetch(["q"], 1, "w1", None) == []


async def test_a_pending_job_is_published_only_when_activated(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push(pending=True)
        assert rig.transport.kinds() == []
        active = await rig.engine.activate(job.id)
        assert active.state is JobState.AVAILABLE
        assert rig.transport.kinds() == ["available"]


async def test_max_depth_refuses_a_push_to_a_full_queue(tmp_path: Path) -> None:
    async with engine_rig(tmp_path, max_depth=(("q", 2),)) as rig:
        await rig.push()
        await rig.push()
        with pytest.raises(QueueFull) as refused:
            await rig.push()
        assert refused.value.headers == {"X-OJS-Queue-Depth": "2", "X-OJS-Queue-Bound": "2"}
        assert len(rig.transport.ready["q"]) == 2
        await rig.push(queue="other")  # other queues are not bound


async def test_fetch_hands_out_higher_priority_first_then_in_order(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        low = await rig.push(priority=-5)
        first = await rig.push(priority=5)
        second = await rig.push(priority=5)
        await rig.open()
        fetched = await rig.engine.fetch(["q"], 3, "w1", None)
        assert [j.id for j in fetched] == [first.id, second.id, low.id]


async def test_a_quiet_worker_gets_no_new_jobs(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        await rig.push()
        await rig.open()
        rig.engine.worker_beat("w1", "quiet", 0)
        assert await rig.engine.fetch(["q"], 1, "w1", None) == []
        assert rig.engine.gateway.buffers.sizes() == {"q": 1}


async def test_progress_is_read_at_once_and_written_once_a_second(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.fetch_one(visibility_ms=2_000)
        for step in range(5):
            _, applied = await rig.engine.report_progress(job.id, ProgressUpdate(step / 10))
            assert applied
        assert (await rig.engine.get(job.id)).progress["progress"] == 0.4  # type: ignore[index]
        assert (await rig.stored(job.id)).progress is None  # not written yet
        assert rig.event_types().count("progress.updated") == 1
        await rig.advance(1.01)
        await rig.settle()
        assert (await rig.stored(job.id)).progress["progress"] == 0.4  # type: ignore[index]
        assert rig.event_types().count("progress.updated") == 2  # the latest, announced once
        # Progress counts as a heartbeat: the lease (2 s) outlives its first deadline
        await rig.engine.report_progress(job.id, ProgressUpdate(0.9))
        await rig.advance(1.5)
        await rig.settle()
        assert (await rig.stored(job.id)).state is JobState.ACTIVE


async def test_deleting_a_queue_with_open_jobs_needs_force(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.fetch_one()
        with pytest.raises(QueueNotEmpty):
            await rig.engine.delete_queue("q", force=False)
        assert "q" in rig.engine.queues.ready
        deleted = await rig.engine.delete_queue("q", force=True)
        assert (deleted["jobs_cancelled"], deleted["deleted"]) == (1, True)
        assert job.id not in rig.engine.leases and "q" not in rig.transport.declared
        assert "job.cancelled" in rig.event_types()
        again = await rig.push()  # a later push declares the queue afresh
        assert again.state is JobState.AVAILABLE and "q" in rig.transport.declared


async def test_a_requeued_job_starts_its_next_attempt_without_the_old_progress(
    tmp_path: Path,
) -> None:
    # (The attempt number is given back on requeue, so the next attempt has the same
    # number; before the flush, the old attempt's progress used to show on it.)
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.fetch_one()
        await rig.engine.report_progress(job.id, ProgressUpdate(0.4))
        await rig.engine.nack(job.id, FailureReport(message="x"), "w1", requeue=True)
        again = await rig.fetch_one()
        assert again.attempt == 1
        assert (await rig.engine.get(job.id)).progress is None
        await rig.advance(1.01)  # a flush writes nothing stale either
        await rig.settle()
        assert (await rig.stored(job.id)).progress is None
