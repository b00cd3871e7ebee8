"""Native workers' reports and dead letters on the fakes: completions, failures, stale
reports, heartbeats that start a job, restarts after a lost worker, binding retries, and
what a dead-letter queue receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from ojs_amqp.core.job import MISSING, JobState
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.engine.ports import DELIVERY_LIMIT
from ojs_amqp.testing.transport import Message
from tests.unit.engine_rig import Rig, engine_rig

pytestmark = pytest.mark.timeout(20)


@dataclass(frozen=True)
class Report:
    """A native worker's report, as the edge hands it over (a WorkerReport)."""

    job_id: str | None
    kind: str = "ojs.report.completed"
    worker_id: str | None = "nw1"
    copy: int | None = None
    started_at_ms: int | None = None
    attempt: int | None = None
    result: Any = MISSING
    failure: FailureReport | None = None
    envelope: dict[str, Any] | None = None
    started: bool = False
    delivery_count: int = 0
    progress: Any = None
    queues: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Ref:
    job_id: str | None
    copy: int | None


async def _native_job(rig: Rig) -> Any:
    return await rig.push(queue="nq", retry={"max_attempts": 2})


async def test_a_native_completion_completes_the_job(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await _native_job(rig)
        done = await rig.engine.native.apply(Report(job.id, copy=job.copy, result=7), "nq")
        assert done is not None and done.state is JobState.COMPLETED and done.result == 7
        assert rig.event_types() == ["job.enqueued", "job.started", "job.completed"]
        applied = ('type="ojs.report.completed"', 'outcome="applied"')
        assert rig.metric("ojs_amqp_worker_reports_total", *applied) == 1


async def test_a_report_about_an_older_copy_is_stale_and_changes_nothing(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await _native_job(rig)
        assert await rig.engine.native.apply(Report(job.id, copy=job.copy + 5), "nq") is None
        assert (await rig.stored(job.id)).state is JobState.AVAILABLE
        stale = ('type="ojs.report.completed"', 'outcome="stale"')
        assert rig.metric("ojs_amqp_worker_reports_total", *stale) == 1


async def test_a_native_failure_follows_the_retry_policy(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await _native_job(rig)
        report = Report(job.id, kind="ojs.report.failed", copy=job.copy,
                        failure=FailureReport(message="boom"))  # fmt: skip
        failed = await rig.engine.native.apply(report, "nq")
        assert failed is not None and failed.state is JobState.RETRYABLE
        assert rig.transport.kinds() == ["available", "parked"]


async def test_a_completion_for_a_job_never_seen_adopts_and_completes_it(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        envelope = {"type": "ext", "args": []}
        done = await rig.engine.native.apply(Report("ext-1", envelope=envelope), "nq")
        assert done is not None and done.state is JobState.COMPLETED
        assert (await rig.stored("ext-1")).state is JobState.COMPLETED
        assert rig.event_types() == ["job.enqueued", "job.started", "job.completed"]


async def test_a_first_heartbeat_marks_the_job_active_under_its_worker(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await _native_job(rig)
        beat = await rig.engine.native.heartbeat(Report(job.id, copy=job.copy), "nq")
        assert (beat.state, beat.worker_id) == (JobState.ACTIVE, "nw1")
        assert rig.event_types()[-2:] == ["job.started", "job.heartbeat"]


async def test_a_restart_after_a_lost_worker_charges_the_attempt(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await _native_job(rig)
        await rig.engine.native.heartbeat(Report(job.id, copy=job.copy), "nq")
        # The worker died; the copy came back and another worker asks before running it
        asked = Report(job.id, worker_id="nw2", copy=job.copy, started=True, delivery_count=1)
        again = await rig.engine.native.heartbeat(asked, "nq")
        assert (again.state, again.worker_id, again.attempt) == (JobState.ACTIVE, "nw2", 2)
        assert rig.metric('ojs_lease_expired_total{kind="worker_lost"') == 1
        assert "job.failed" in rig.event_types()


async def test_a_binding_retry_parks_the_job_for_its_delay(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await _native_job(rig)
        parked = await rig.engine.native.binding_retry(Ref(job.id, job.copy), {}, "nq", 5_000,
                                                FailureReport(message="later"))  # fmt: skip
        assert parked is not None and parked.state is JobState.RETRYABLE
        [timer] = rig.transport.ladder
        assert timer.due_at_ms == rig.clock.now_ms() + 5_000


async def test_a_workers_reject_reaching_the_dead_letter_queue_discards_the_job(
    tmp_path: Path,
) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await _native_job(rig)
        [copy] = rig.transport.ready["nq"]
        rig.broker.dead_letter(copy, "rejected")
        [handle] = await rig.broker.deliver_dead("nq")
        assert handle.outcome == "acked"
        stored = await rig.stored(job.id)
        assert stored.state is JobState.DISCARDED and stored.dead_letter
        assert rig.event_types()[-1] == "job.discarded"


async def test_the_delivery_limit_is_reported_as_such(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await _native_job(rig)
        [copy] = rig.transport.ready["nq"]
        copy.returns = 20
        rig.broker.dead_letter(copy, DELIVERY_LIMIT)
        await rig.broker.deliver_dead("nq")
        stored = await rig.stored(job.id)
        assert stored.error is not None and stored.error["code"] == DELIVERY_LIMIT
        assert "after 20 deliveries" in stored.error["message"]
        assert rig.metric("ojs_job_delivery_limit_total", 'queue="nq"') == 1


async def test_our_own_discard_in_the_dead_letter_queue_is_only_acked(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push(queue="nq", retry={"max_attempts": 1})
        await rig.fetch_one("nq")
        await rig.engine.nack(job.id, FailureReport(message="x"), "w1", False)
        events_before = rig.event_types()
        [handle] = await rig.broker.deliver_dead("nq")
        assert handle.outcome == "acked"
        assert rig.event_types() == events_before


async def test_a_dead_letter_is_retried_as_a_new_copy(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push(queue="nq", retry={"max_attempts": 1, "on_exhaustion": "dead_letter"})
        await rig.fetch_one("nq")
        await rig.engine.nack(job.id, FailureReport(message="x"), "w1", False)
        letters, total = await rig.engine.dead_letters("nq", 10, 0)
        assert total == 1 and letters[0].id == job.id
        again = await rig.engine.retry_dead_letter(job.id)
        assert again.state is JobState.AVAILABLE
        assert rig.event_types()[-1] == "job.enqueued"
        assert [m.job_id for m in rig.transport.ready["nq"]][-1] == job.id


async def test_adoption_from_a_dead_letter_of_a_job_never_seen(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        await rig.engine.queues.ensure("nq")
        body = orjson.dumps({"type": "ext", "args": []})
        rig.transport.dead.setdefault("nq", []).append(
            Message("ext-9", None, body, "nq", death_reason="rejected")
        )
        await rig.broker.deliver_dead("nq")
        stored = await rig.stored("ext-9")
        assert stored.state is JobState.DISCARDED
