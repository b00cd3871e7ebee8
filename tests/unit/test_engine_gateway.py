"""The gateway on the fakes: a FETCH right after a push waits for the copy on its way, the
first FETCH of a queue waits for its first burst, and an idle gateway with a lease stays."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ojs_amqp.testing.clock import settle
from tests.unit.engine_rig import engine_rig

pytestmark = pytest.mark.timeout(20)


async def test_a_fetch_right_after_a_push_waits_for_the_copy_on_its_way(tmp_path: Path) -> None:
    async with engine_rig(tmp_path, fetch_wait_ms=5_000) as rig:
        await rig.open()
        job = await rig.push()  # published; its delivery has not arrived yet
        fetching = asyncio.ensure_future(rig.engine.fetch(["q"], 1, "w1", None))
        await settle()
        assert not fetching.done()  # waiting for the expected copy, not answering empty
        await rig.broker.deliver("q")
        [fetched] = await fetching
        assert fetched.id == job.id


async def test_a_fetch_with_nothing_on_its_way_answers_empty_at_its_deadline(
    tmp_path: Path,
) -> None:
    async with engine_rig(tmp_path, fetch_wait_ms=2_000) as rig:
        await rig.open()
        fetching = asyncio.ensure_future(rig.engine.fetch(["q"], 1, "w1", None))
        await rig.advance(1.9)
        assert not fetching.done()
        await rig.advance(0.2)
        assert await fetching == []


async def test_the_first_fetch_of_a_queue_waits_for_its_first_burst(tmp_path: Path) -> None:
    async with engine_rig(tmp_path, fetch_wait_ms=0) as rig:
        low = await rig.push(priority=-1)
        high = await rig.push(priority=9)
        await rig.engine.queues.ensure("q")
        fetching = asyncio.ensure_future(rig.engine.fetch(["q"], 1, "w1", None))
        await settle()
        assert rig.transport.consuming_jobs("q") and not fetching.done()
        await rig.broker.deliver("q", 1)  # the low one lands first
        await settle()
        assert not fetching.done()  # two were waiting: the fill waits for both
        await rig.broker.deliver("q")
        [fetched] = await fetching
        assert fetched.id == high.id and low.id != high.id


async def test_an_idle_gateway_holding_a_lease_stays_open(tmp_path: Path) -> None:
    async with engine_rig(tmp_path, gateway_idle_ms=1_000) as rig:
        job = await rig.push()
        await rig.fetch_one(visibility_ms=600_000)
        await rig.advance(10)
        await rig.settle()
        assert rig.transport.consuming_jobs("q")
        await rig.engine.ack(job.id, None, "w1")
        await rig.advance(5)
        await rig.settle()
        assert not rig.transport.consuming_jobs("q")
