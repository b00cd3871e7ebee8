"""The in-memory store's levers for engine tests (its contract is test_store_contract.py's):
writes held in flight, and a store that fails every call."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.errors import Duplicate
from ojs_amqp.store.base import StoreUnavailable
from ojs_amqp.testing.store import MemoryJobStore


def _job(n: int = 1, **changes: object) -> Job:
    job = Job(id=f"019a0000-0000-7000-8000-{n:012d}", type="t.x", queue="q", args=[n],
              state=JobState.AVAILABLE, created_at_ms=1_000 + n)  # fmt: skip
    return replace(job, **changes)  # type: ignore[arg-type]


async def test_held_writes_stay_in_flight_until_released_then_apply_in_order() -> None:
    store = MemoryJobStore()
    await store.insert(_job(), published=True)
    store.hold_writes()
    lease = asyncio.ensure_future(
        store.update(_job(state=JobState.ACTIVE), expect_copy=1, expect_state=JobState.AVAILABLE)
    )
    expiry = asyncio.ensure_future(
        store.update(_job(copy=2), expect_copy=1, expect_state=JobState.AVAILABLE)
    )
    await asyncio.sleep(0)
    assert store.writes_in_flight == 2 and not lease.done()
    assert (await store.get(_job().id)).state is JobState.AVAILABLE  # type: ignore[union-attr]
    await store.release_writes()
    assert store.writes_in_flight == 0
    assert (lease.result(), expiry.result()) == (True, False)
    assert (await store.get(_job().id)).state is JobState.ACTIVE  # type: ignore[union-attr]


async def test_held_inserts_of_one_id_still_let_only_one_in() -> None:
    store = MemoryJobStore()
    store.hold_writes()
    inserts = [asyncio.ensure_future(store.insert(_job(), published=True)) for _ in range(2)]
    await asyncio.sleep(0)
    await store.release_writes()
    outcomes = await asyncio.gather(*inserts, return_exceptions=True)
    assert outcomes[0] is None and isinstance(outcomes[1], Duplicate)


async def test_a_failing_store_raises_on_every_call_and_recovers() -> None:
    store = MemoryJobStore()
    await store.insert(_job(), published=True)
    store.fail_with = StoreUnavailable("the database is gone")
    with pytest.raises(StoreUnavailable):
        await store.get(_job().id)
    with pytest.raises(StoreUnavailable):
        await store.update(_job(state=JobState.ACTIVE))
    with pytest.raises(StoreUnavailable):
        await store.outbox_size()
    store.fail_with = None
    assert (await store.get(_job().id)).state is JobState.AVAILABLE  # type: ignore[union-attr]


async def test_a_write_held_when_the_store_fails_fails_and_leaves_the_row() -> None:
    store = MemoryJobStore()
    await store.insert(_job(), published=True)
    store.hold_writes()
    write = asyncio.ensure_future(store.update(_job(state=JobState.COMPLETED)))
    await asyncio.sleep(0)
    store.fail_with = StoreUnavailable("lost mid-commit")
    await store.release_writes()
    with pytest.raises(StoreUnavailable):
        await write
    store.fail_with = None
    assert (await store.get(_job().id)).state is JobState.AVAILABLE  # type: ignore[union-attr]


async def test_writes_are_counted() -> None:
    store = MemoryJobStore()
    await store.insert(_job(), published=False)
    await store.mark_published([_job().id])
    await store.get(_job().id)
    assert store.writes == 2
