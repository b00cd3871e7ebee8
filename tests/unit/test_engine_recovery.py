"""Recovery on the fakes: a lost connection, a reconnect that replays the outbox, a lost
consumer channel, a job queue deleted under us, and gateways that close without returns."""

from __future__ import annotations

from pathlib import Path

import pytest

from ojs_amqp.core.job import JobState
from ojs_amqp.errors import BackendUnavailable
from tests.unit.engine_rig import engine_rig

pytestmark = pytest.mark.timeout(20)


async def test_a_lost_connection_voids_buffers_and_keeps_leases(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        leased = await rig.push()
        await rig.fetch_one()
        waiting = await rig.push()
        await rig.broker.deliver("q")
        assert rig.engine.gateway.buffers.sizes() == {"q": 1}
        await rig.broker.lose_connection()
        assert rig.engine.gateway.buffers.sizes() == {}
        lease = rig.engine.leases.get(leased.id)
        assert lease is not None and lease.message is None
        await rig.broker.reconnect()
        # The broker delivers both again, counted once: the waiting job is renewed, the
        # leased one's delivery handed over to a ladder timer; the worker still acks
        await rig.broker.deliver("q")
        await rig.settle()
        assert (await rig.stored(waiting.id)).copy == waiting.copy + 1
        assert "parked" in rig.transport.kinds()
        done = await rig.engine.ack(leased.id, None, "w1")
        assert done.state is JobState.COMPLETED


async def test_a_reconnect_replays_what_the_outbox_holds(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        job = await rig.push()
        await rig.store.update(job, published=False)  # as if its confirm never came
        assert [j.id for j in await rig.store.unpublished(10)] == [job.id]
        await rig.broker.lose_connection()
        await rig.broker.reconnect()
        assert rig.transport.kinds() == ["available", "available"]
        assert await rig.store.unpublished(10) == []


async def test_a_failed_push_is_refused_and_leaves_no_row(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        rig.transport.refuse = BackendUnavailable("away")
        with pytest.raises(BackendUnavailable):
            await rig.push(id="019cc93d-da80-7336-a0db-7f22de0892c4")
        assert await rig.store.get("019cc93d-da80-7336-a0db-7f22de0892c4") is None
        assert rig.event_types() == []


async def test_the_outbox_of_a_daemon_that_died_mid_push_is_replayed_on_start(
    tmp_path: Path,
) -> None:
    async with engine_rig(tmp_path) as first:
        job = await first.push()
        await first.engine.producer.flush_published()
        await first.store.update(job, published=False)  # died before the confirm
    async with engine_rig(tmp_path) as rig:
        assert rig.transport.kinds() == ["available"]
        assert rig.transport.ready["q"][0].job_id == job.id


async def test_a_lost_consumer_channel_forgets_that_queue_only(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        await rig.push(queue="a")
        await rig.push(queue="b")
        await rig.open("a")
        await rig.open("b")
        rig.broker.lose_job_consumer("a")
        assert rig.engine.gateway.buffers.sizes() == {"b": 1}


async def test_a_job_queue_lost_on_the_broker_is_refilled_from_the_store(tmp_path: Path) -> None:
    async with engine_rig(tmp_path) as rig:
        jobs = [await rig.push() for _ in range(3)]
        await rig.broker.restore_job_queue("q")
        assert sorted(m.job_id for m in rig.transport.ready["q"]) == sorted(j.id for j in jobs)
        for job in jobs:
            assert (await rig.stored(job.id)).copy == job.copy + 1


async def test_an_idle_gateway_closes_renewing_its_buffer_not_returning_it(
    tmp_path: Path,
) -> None:
    async with engine_rig(tmp_path, gateway_idle_ms=10_000) as rig:
        job = await rig.push()
        await rig.open()
        [(_, _, first)] = rig.transport.delivered
        await rig.advance(15.1)  # past the idle time, and a gateway check
        await rig.settle()
        assert not rig.transport.consuming_jobs("q")
        assert first.outcome == "acked"  # renewed: the fresh copy waits in the queue
        assert [m.job_id for m in rig.transport.ready["q"]] == [job.id]
        assert rig.metric('ojs_amqp_deliveries_renewed_total{reason="gateway_close"}') == 1


async def test_a_delivery_held_too_long_is_renewed_and_keeps_its_place(tmp_path: Path) -> None:
    async with engine_rig(tmp_path, delivery_hold_ms=4_000, gateway_idle_ms=3_600_000) as rig:
        first = await rig.push()
        second = await rig.push()
        await rig.open()
        await rig.advance(5.1)  # the hold check runs every second at this setting
        await rig.settle()
        assert rig.metric('ojs_amqp_deliveries_renewed_total{reason="hold"}') == 2
        await rig.broker.deliver("q")
        fetched = await rig.engine.fetch(["q"], 2, "w1", None)
        assert [j.id for j in fetched] == [first.id, second.id]
        assert all(j.copy == 2 for j in fetched)


async def test_reset_forgets_every_part(tmp_path: Path) -> None:
    async with engine_rig(tmp_path, test_mode=True) as rig:
        job = await rig.push()
        await rig.fetch_one()
        await rig.push(queue="other", scheduled_at="2099-01-01T00:00:00Z")
        await rig.engine.reset()
        assert len(rig.engine.leases) == 0 and len(rig.engine.timers) == 0
        assert rig.engine.gateway.open == {} and rig.engine.queues.ready == set()
        assert await rig.store.get(job.id) is None
        assert rig.event_types() == []
        assert rig.transport.ladder == []
        again = await rig.push()
        assert again.state is JobState.AVAILABLE
