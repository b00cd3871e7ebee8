"""The outcome fan-out: every move reaches metrics, events and listeners through one
place, and a listener that raises is logged and counted without breaking the move."""

from __future__ import annotations

from pathlib import Path

import pytest

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.engine.kinds import Directive, EventType, LeaseKind, Outcome
from tests.unit.engine_rig import engine_rig

pytestmark = pytest.mark.timeout(20)


class Recorder:
    def __init__(self) -> None:
        self.heard: list[tuple[Outcome, str | None, JobState]] = []

    def job_moved(self, outcome: Outcome, before: Job | None, after: Job) -> None:
        self.heard.append((outcome, before.state.value if before else None, after.state))


class Broken:
    def job_moved(self, outcome: Outcome, before: Job | None, after: Job) -> None:
        raise RuntimeError("listener bug")


async def test_a_listener_hears_each_move_of_a_job_in_order(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        heard = Recorder()
        rig.engine.listen(heard)
        job = await rig.push()
        await rig.fetch_one()
        await rig.engine.ack(job.id, None, "w1")
        assert heard.heard == [
            (Outcome.ENQUEUED, None, JobState.AVAILABLE),
            (Outcome.STARTED, "available", JobState.ACTIVE),
            (Outcome.COMPLETED, "active", JobState.COMPLETED),
        ]


async def test_a_listener_hears_failures_cancels_and_expiries(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        heard = Recorder()
        rig.engine.listen(heard)
        failing = await rig.push(retry={"max_attempts": 1})
        await rig.fetch_one()
        await rig.engine.nack(failing.id, FailureReport(message="x"), "w1", False)
        cancelled = await rig.push(queue="other")
        await rig.engine.cancel(cancelled.id)
        expiring = await rig.push(queue="third", expires_at="2000-01-01T00:00:00Z")
        await rig.advance(1.1)  # the expiry sweep
        await rig.settle()
        outcomes = [(o, s) for o, _, s in heard.heard if o is not Outcome.ENQUEUED]
        assert (Outcome.FAILED, JobState.DISCARDED) in outcomes
        assert (Outcome.CANCELLED, JobState.CANCELLED) in outcomes
        assert (Outcome.EXPIRED, JobState.DISCARDED) in outcomes
        assert (await rig.stored(expiring.id)).state is JobState.DISCARDED


async def test_a_listener_that_raises_is_counted_and_the_move_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with engine_rig(tmp_path) as rig:
        after = Recorder()
        rig.engine.listen(Broken())
        rig.engine.listen(after)
        job = await rig.push()
        await rig.fetch_one()
        done = await rig.engine.ack(job.id, None, "w1")
        assert done.state is JobState.COMPLETED
        assert (await rig.stored(job.id)).state is JobState.COMPLETED
        assert rig.engine.outcomes.listener_failures == 3
        assert [o for o, _, _ in after.heard] == [Outcome.ENQUEUED, Outcome.STARTED,
                                                 Outcome.COMPLETED]  # fmt: skip
        assert "outcome listener" in caplog.text and "listener bug" in caplog.text


async def test_events_metrics_and_enums_keep_their_wire_values(tmp_path: Path) -> None:
    assert [e.value for e in EventType][:3] == ["job.enqueued", "job.scheduled", "job.started"]
    assert {k.value for k in LeaseKind} == {"visibility", "timeout", "worker_lost", "handover"}
    assert [d.value for d in Directive] == ["running", "quiet", "terminate"]
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.fetch_one()
        await rig.engine.ack(job.id, None, "w1")
        events, _, _ = rig.events.query(limit=10)
        assert all(isinstance(e["type"], str) for e in events)
        assert [e["type"] for e in events] == ["job.enqueued", "job.started", "job.completed"]
        assert rig.metric('ojs_job_enqueued_total{queue="q",type="t.job"}') == 1
        assert rig.metric('ojs_job_completed_total{queue="q",type="t.job"}') == 1


async def test_a_scheduled_push_announces_enqueued_then_scheduled(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        await rig.push(scheduled_at="2099-01-01T00:00:00Z")
        assert rig.event_types() == ["job.enqueued", "job.scheduled"]


async def test_the_directive_a_heartbeat_answers_is_the_strongest_asked(tmp_path: Path) -> None:
    async with engine_rig(tmp_path, test_mode=True) as rig:
        job = await rig.push(meta={"test_directive": "terminate"})
        await rig.fetch_one()
        rig.engine.set_worker_directive("w1", "quiet")
        directive, _ = await rig.engine.heartbeat("w1", [job.id], None)
        assert directive == "terminate"
        with pytest.raises(Exception, match="directive must be one of running, quiet, terminate"):
            rig.engine.set_worker_directive("w1", "sleep")
