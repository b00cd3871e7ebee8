"""The JobStore contract, once, for every implementation (SQLite, in-memory, PostgreSQL):
what the engine relies on when it records a move, replays the outbox, sweeps and counts."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.errors import Duplicate
from ojs_amqp.store.base import JobStore


def _job(n: int = 1, **changes: object) -> Job:
    job = Job(id=f"019a0000-0000-7000-8000-{n:012d}", type="t.x", queue="q", args=[n],
              state=JobState.AVAILABLE, created_at_ms=1_000 + n)  # fmt: skip
    return replace(job, **changes)  # type: ignore[arg-type]


async def _state(store: JobStore, job: Job) -> JobState | None:
    stored = await store.get(job.id)
    return stored.state if stored else None


# --- rows: insert, get, delete ------------------------------------------------------------


async def test_a_job_reads_back_exactly_as_written(store: JobStore) -> None:
    job = _job(meta={"k": [1, 2], "b": {"z": 1, "a": 2}}, extra={"x_custom": True},
               errors=[{"code": "e"}], result={"ok": 1.5}, copy=3)  # fmt: skip
    await store.insert(job, published=True)
    assert await store.get(job.id) == job


async def test_a_missing_job_reads_as_none(store: JobStore) -> None:
    assert await store.get(_job(9).id) is None


async def test_lookups_answer_in_the_order_they_were_made(store: JobStore) -> None:
    """The gateway buffers deliveries in the order their lookups return (FIFO fetches)."""
    await asyncio.gather(*(store.insert(_job(n), published=True) for n in range(50)))
    answered: list[int] = []

    async def look(n: int) -> None:
        if n % 10 == 0:
            await asyncio.sleep(0)  # some lookups start a turn later: a batch of their own
        job = await store.get(_job(n).id if n % 7 else _job(1000 + n).id)
        assert (job is None) == (n % 7 == 0)
        answered.append(n)

    await asyncio.gather(*(look(n) for n in range(50)))
    late = [n for n in range(50) if n % 10 == 0]
    assert answered == [n for n in range(50) if n % 10] + late


async def test_a_second_insert_with_the_same_id_is_a_duplicate(store: JobStore) -> None:
    await store.insert(_job(), published=True)
    with pytest.raises(Duplicate) as raised:
        await store.insert(_job(args=["other"]), published=True)
    assert raised.value.details == {"existing_job_id": _job().id}
    assert (await store.get(_job().id)).args == [1]  # type: ignore[union-attr]


async def test_concurrent_inserts_of_one_id_let_exactly_one_win(store: JobStore) -> None:
    outcomes = await asyncio.gather(
        *(store.insert(_job(args=[n]), published=True) for n in range(5)),
        return_exceptions=True,
    )
    assert sum(o is None for o in outcomes) == 1
    assert all(isinstance(o, Duplicate) for o in outcomes if o is not None)
    assert (await store.get(_job().id)).args == [0]  # type: ignore[union-attr]


async def test_delete_says_whether_there_was_a_row(store: JobStore) -> None:
    await store.insert(_job(), published=True)
    assert await store.delete(_job().id)
    assert not await store.delete(_job().id)
    assert await store.get(_job().id) is None


# --- compare-and-set by copy number and state ---------------------------------------------


async def test_update_without_expectations_replaces_the_row(store: JobStore) -> None:
    await store.insert(_job(), published=True)
    assert await store.update(_job(state=JobState.ACTIVE, copy=7))
    stored = await store.get(_job().id)
    assert stored is not None and stored.state is JobState.ACTIVE and stored.copy == 7


async def test_update_of_a_missing_job_writes_nothing(store: JobStore) -> None:
    assert not await store.update(_job(), expect_copy=1)
    assert not await store.update(_job())
    assert await store.get(_job().id) is None


async def test_update_with_a_stale_copy_number_writes_nothing(store: JobStore) -> None:
    job = _job()
    await store.insert(job, published=True)
    assert await store.update(replace(job, state=JobState.CANCELLED, copy=2), expect_copy=1)
    assert not await store.update(replace(job, state=JobState.ACTIVE), expect_copy=1)
    assert await _state(store, job) is JobState.CANCELLED


async def test_a_state_check_refuses_a_move_of_a_job_leased_on_the_same_copy(
    store: JobStore,
) -> None:
    """A lease keeps the copy number, so a republish read before it must check the state."""
    job = _job()
    await store.insert(job, published=True)
    assert await store.update(replace(job, state=JobState.ACTIVE), expect_copy=1)
    republished = replace(job, copy=2)
    assert not await store.update(republished, expect_copy=1, expect_state=JobState.AVAILABLE)
    assert await _state(store, job) is JobState.ACTIVE
    assert await store.update(republished, expect_copy=1, expect_state=JobState.ACTIVE)
    assert (await store.get(job.id)).copy == 2  # type: ignore[union-attr]


async def test_a_state_check_alone_compares_the_state(store: JobStore) -> None:
    await store.insert(_job(), published=True)
    assert not await store.update(_job(state=JobState.COMPLETED), expect_state=JobState.ACTIVE)
    assert await store.update(_job(state=JobState.ACTIVE), expect_state=JobState.AVAILABLE)
    assert await _state(store, _job()) is JobState.ACTIVE


async def test_racing_moves_from_one_copy_let_exactly_one_win(store: JobStore) -> None:
    """Edges that read copy 1 at once (a retry, a lease expiry, a cancel): one move lands."""
    job = _job()
    await store.insert(job, published=True)
    moves = [replace(job, state=JobState.RETRYABLE, copy=2, worker_id="w1"),
             replace(job, state=JobState.AVAILABLE, copy=2, worker_id="w2"),
             replace(job, state=JobState.DISCARDED, copy=2, worker_id="w3")]  # fmt: skip
    won = await asyncio.gather(*(store.update(m, expect_copy=1) for m in moves))
    assert won == [True, False, False]
    assert (await store.get(job.id)).worker_id == "w1"  # type: ignore[union-attr]


async def test_racing_moves_that_keep_the_copy_are_told_apart_by_state(store: JobStore) -> None:
    """An ack and a lease expiry of one leased copy: the state check lets one land."""
    job = _job(state=JobState.ACTIVE)
    await store.insert(job, published=True)
    moves = [replace(job, state=JobState.COMPLETED), replace(job, state=JobState.AVAILABLE)]
    won = await asyncio.gather(
        *(store.update(m, expect_copy=1, expect_state=JobState.ACTIVE) for m in moves)
    )
    assert won == [True, False]
    assert await _state(store, job) is JobState.COMPLETED


async def test_moves_of_one_job_in_one_loop_turn_apply_in_call_order(store: JobStore) -> None:
    job = _job()
    await store.insert(job, published=True)
    first = store.update(replace(job, state=JobState.ACTIVE, copy=2), expect_copy=1)
    second = store.update(replace(job, state=JobState.COMPLETED, copy=2), expect_copy=2,
                          expect_state=JobState.ACTIVE)  # fmt: skip
    third = store.update(replace(job, state=JobState.CANCELLED, copy=3), expect_copy=1)
    deleted = store.delete(job.id)
    again = store.update(job)
    assert list(await asyncio.gather(first, second, third, deleted, again)) == [
        True, True, False, True, False
    ]  # fmt: skip
    assert await store.get(job.id) is None


async def test_many_writers_in_one_turn_all_land(store: JobStore) -> None:
    await asyncio.gather(*(store.insert(_job(n), published=True) for n in range(200)))
    moves = [store.update(_job(n, state=JobState.ACTIVE), expect_copy=1) for n in range(200)]
    assert all(await asyncio.gather(*moves))
    assert await store.count_by_state() == {("q", "active"): 200}


async def test_a_cancelled_writer_does_not_cancel_the_others(store: JobStore) -> None:
    writers = [asyncio.ensure_future(store.insert(_job(n), published=True)) for n in range(3)]
    writers[1].cancel()
    await asyncio.gather(*writers, return_exceptions=True)
    assert writers[0].result() is None and writers[2].result() is None
    assert await store.get(_job(0).id) is not None and await store.get(_job(2).id) is not None


# --- the outbox ---------------------------------------------------------------------------


async def test_outbox_rows_stay_unpublished_until_marked(store: JobStore) -> None:
    await store.insert(_job(1), published=False)
    await store.insert(_job(2), published=True)
    await store.insert(_job(3), published=False)
    assert await store.outbox_size() == 2
    assert sorted(j.id for j in await store.unpublished(10)) == [_job(1).id, _job(3).id]
    assert len(await store.unpublished(1)) == 1
    await store.mark_published([_job(1).id, _job(9).id])  # an unknown id is no error
    assert [j.id for j in await store.unpublished(10)] == [_job(3).id]
    await store.mark_published([])
    await store.mark_published([_job(3).id])
    assert await store.unpublished(10) == [] and await store.outbox_size() == 0


async def test_an_update_can_put_a_row_back_in_the_outbox(store: JobStore) -> None:
    await store.insert(_job(), published=True)
    assert await store.update(_job(copy=2), expect_copy=1, published=False)
    assert [j.copy for j in await store.unpublished(10)] == [2]
    assert await store.update(_job(copy=3), expect_copy=2)
    assert await store.outbox_size() == 0


# --- lookups ------------------------------------------------------------------------------


async def test_open_jobs_and_available_list_only_what_is_still_waiting_in_a_queue(
    store: JobStore,
) -> None:
    waiting = _job(1)
    running = _job(2, state=JobState.ACTIVE)
    done = _job(3, state=JobState.COMPLETED, completed_at_ms=5)
    elsewhere = _job(4, queue="other")
    retrying = _job(5, state=JobState.RETRYABLE)
    for job in (waiting, running, done, elsewhere, retrying):
        await store.insert(job, published=True)
    assert await store.open_jobs(waiting.queue) == 3
    assert await store.open_jobs("nowhere") == 0
    assert [j.id for j in await store.available(waiting.queue)] == [waiting.id]
    assert sorted(j.id for j in await store.unfinished("q")) == [
        waiting.id, running.id, retrying.id
    ]  # fmt: skip


async def test_count_by_state_counts_per_queue_and_state(store: JobStore) -> None:
    for n, queue, state in [(1, "a", JobState.AVAILABLE), (2, "a", JobState.AVAILABLE),
                            (3, "a", JobState.ACTIVE), (4, "b", JobState.AVAILABLE)]:  # fmt: skip
        await store.insert(_job(n, queue=queue, state=state), published=True)
    assert await store.count_by_state() == {
        ("a", "available"): 2, ("a", "active"): 1, ("b", "available"): 1
    }  # fmt: skip


async def test_expiring_finds_only_waiting_jobs_past_their_expiry(store: JobStore) -> None:
    await store.insert(_job(1, expires_at_ms=50), published=True)
    await store.insert(_job(2, expires_at_ms=500), published=True)
    await store.insert(_job(3, expires_at_ms=50, state=JobState.ACTIVE), published=True)
    await store.insert(_job(4, expires_at_ms=50, state=JobState.COMPLETED, completed_at_ms=60),
                       published=True)  # fmt: skip
    await store.insert(_job(5, expires_at_ms=100, state=JobState.SCHEDULED), published=True)
    assert sorted(j.id for j in await store.expiring(100, 10)) == [_job(1).id, _job(5).id]
    assert len(await store.expiring(100, 1)) == 1


async def test_dead_letters_list_only_dead_lettered_discards_newest_first(store: JobStore) -> None:
    def dead(n: int, at: int, queue: str = "q") -> Job:
        return _job(n, queue=queue, state=JobState.DISCARDED, dead_letter=True,
                    discarded_at_ms=at)  # fmt: skip

    for job in (dead(1, 10), dead(2, 30), dead(3, 20, "other"),
                _job(4, state=JobState.DISCARDED, discarded_at_ms=5),
                _job(5, state=JobState.RETRYABLE, dead_letter=True)):  # fmt: skip
        await store.insert(job, published=True)
    jobs, total = await store.dead_letters(None, 10, 0)
    assert [j.id for j in jobs] == [dead(2, 0).id, dead(3, 0).id, dead(1, 0).id] and total == 3
    jobs, total = await store.dead_letters("q", 1, 1)
    assert [j.id for j in jobs] == [dead(1, 0).id] and total == 2
    assert await store.dead_letters("none", 10, 0) == ([], 0)


# --- retention ----------------------------------------------------------------------------


async def test_retention_prunes_finished_jobs_but_keeps_dead_letters(store: JobStore) -> None:
    await store.insert(_job(1, state=JobState.COMPLETED, completed_at_ms=10), published=True)
    await store.insert(_job(2, state=JobState.DISCARDED, dead_letter=True, discarded_at_ms=10),
                       published=True)  # fmt: skip
    await store.insert(_job(3), published=True)
    await store.insert(_job(4, state=JobState.CANCELLED, cancelled_at_ms=200), published=True)
    assert await store.prune_finished(100, 100) == 1
    assert await store.get(_job(1).id) is None
    for n in (2, 3, 4):
        assert await store.get(_job(n).id) is not None


async def test_completed_and_discarded_jobs_have_their_own_retention(store: JobStore) -> None:
    await store.insert(_job(1, state=JobState.COMPLETED, completed_at_ms=50), published=True)
    await store.insert(_job(2, state=JobState.DISCARDED, discarded_at_ms=50), published=True)
    assert await store.prune_finished(completed_before_ms=10, discarded_before_ms=100) == 1
    assert await store.get(_job(1).id) is not None and await store.get(_job(2).id) is None
    assert await store.prune_finished(completed_before_ms=100, discarded_before_ms=100) == 1
    assert await store.count_by_state() == {}


async def test_dead_letter_retention_removes_the_old_and_all_but_the_newest_of_each_queue(
    store: JobStore,
) -> None:
    def dead(n: int, at: int, queue: str = "q") -> Job:
        return _job(n, queue=queue, state=JobState.DISCARDED, dead_letter=True,
                    discarded_at_ms=at, completed_at_ms=at)  # fmt: skip

    for n, at in [(1, 10), (2, 200), (3, 300), (4, 400)]:
        await store.insert(dead(n, at), published=True)
    await store.insert(dead(5, 500, queue="other"), published=True)
    await store.insert(_job(6, state=JobState.COMPLETED, completed_at_ms=10), published=True)

    # older than 100: job 1; beyond the newest 2 of queue q: job 2; queue other is small
    assert await store.prune_dead_letters(100, keep_per_queue=2) == 2
    jobs, total = await store.dead_letters(None, 10, 0)
    assert [j.id for j in jobs] == [dead(5, 0).id, dead(4, 0).id, dead(3, 0).id] and total == 3
    assert await store.get(_job(6).id) is not None  # not a dead letter: prune_finished's
    assert await store.prune_dead_letters(100, keep_per_queue=2) == 0


# --- queues -------------------------------------------------------------------------------


async def test_queues_are_listed_by_name_with_their_first_creation_time(store: JobStore) -> None:
    await store.add_queue("mail", 5)
    await store.add_queue("alpha", 7)
    await store.add_queue("mail", 9)
    assert [(q.name, q.created_at_ms) for q in await store.queues()] == [
        ("alpha", 7), ("mail", 5)
    ]  # fmt: skip


async def test_deleting_a_queue_removes_its_row_and_finished_jobs_only(store: JobStore) -> None:
    await store.add_queue("mail", 1)
    await store.add_queue("other", 1)
    jobs = [
        _job(1, queue="mail", state=JobState.PENDING),
        _job(2, queue="mail", state=JobState.SCHEDULED, scheduled_at_ms=9_999),
        _job(3, queue="mail", state=JobState.ACTIVE),
        _job(4, queue="mail", state=JobState.COMPLETED, completed_at_ms=10),
        _job(5, queue="mail", state=JobState.DISCARDED, dead_letter=True, discarded_at_ms=10),
        _job(6, queue="mail", state=JobState.CANCELLED, cancelled_at_ms=10),
        _job(7, queue="other", state=JobState.COMPLETED, completed_at_ms=10),
    ]
    for job in jobs:
        await store.insert(job, published=True)
    assert sorted(j.id for j in await store.unfinished("mail")) == [j.id for j in jobs[:3]]
    assert await store.delete_queue("mail") == 3
    assert [q.name for q in await store.queues()] == ["other"]
    assert sorted(j.id for j in await store.unfinished("mail")) == [j.id for j in jobs[:3]]
    for job in jobs[3:6]:
        assert await store.get(job.id) is None
    assert await store.get(jobs[6].id) is not None
    assert await store.delete_queue("mail") == 0


# --- crons --------------------------------------------------------------------------------


def _cron(name: str, next_run: int, **more: object) -> dict[str, object]:
    return {"name": name, "next_run_at_ms": next_run, "expression": "* * * * *", **more}


async def test_crons_are_stored_listed_and_deleted_by_name(store: JobStore) -> None:
    assert await store.put_cron(_cron("b", 20))
    assert await store.put_cron(_cron("a", 30, args=[1]))
    assert await store.get_cron("a") == _cron("a", 30, args=[1])
    assert [c["name"] for c in await store.crons()] == ["a", "b"]
    assert await store.put_cron(_cron("a", 40))  # replaces
    assert await store.get_cron("a") == _cron("a", 40)
    assert await store.delete_cron("a")
    assert not await store.delete_cron("a")
    assert await store.get_cron("a") is None


async def test_due_crons_are_those_at_or_before_now_earliest_first(store: JobStore) -> None:
    for name, at in [("late", 300), ("early", 100), ("now", 200)]:
        await store.put_cron(_cron(name, at))
    assert [c["name"] for c in await store.due_crons(200)] == ["early", "now"]
    assert await store.due_crons(50) == []


async def test_a_cron_tick_is_claimed_once_by_compare_and_set(store: JobStore) -> None:
    await store.put_cron(_cron("tick", 100))
    claims = [store.put_cron(_cron("tick", 160), expect_next_run_ms=100) for _ in range(3)]
    assert sorted(await asyncio.gather(*claims)) == [False, False, True]
    assert (await store.get_cron("tick"))["next_run_at_ms"] == 160  # type: ignore[index]
    assert not await store.put_cron(_cron("missing", 1), expect_next_run_ms=0)
    assert await store.get_cron("missing") is None


# --- reset --------------------------------------------------------------------------------


async def test_reset_forgets_jobs_queues_and_crons(store: JobStore) -> None:
    await store.insert(_job(1), published=False)
    await store.add_queue("q", 1)
    await store.put_cron(_cron("c", 1))
    await store.reset()
    assert await store.get(_job(1).id) is None and await store.outbox_size() == 0
    assert await store.queues() == [] and await store.crons() == []
    await store.insert(_job(1), published=True)  # usable afterwards
    assert await store.get(_job(1).id) is not None


async def test_the_store_names_its_kind(store: JobStore) -> None:
    assert store.kind in {"sqlite", "memory", "postgresql"}
