"""The worker's bounded memory of cancelled job ids (pure)."""

from __future__ import annotations

import pytest

from ojs_amqp.sdk.recent import RecentIds


def test_it_never_grows_past_its_capacity_and_forgets_the_oldest_first() -> None:
    ids = RecentIds(3)
    for n in range(10):
        ids.add(f"j{n}")
        assert len(ids) <= 3
    assert [f"j{n}" in ids for n in range(10)] == [False] * 7 + [True] * 3


def test_adding_again_makes_an_id_the_newest() -> None:
    ids = RecentIds(2)
    ids.add("a")
    ids.add("b")
    ids.add("a")
    ids.add("c")
    assert "a" in ids and "c" in ids and "b" not in ids


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RecentIds(0)


def test_a_worker_bounds_its_cancelled_ids() -> None:
    from ojs_amqp.sdk import Worker

    worker = Worker(cancelled_capacity=5)
    for n in range(100):
        worker.cancel_local(f"j{n}")
    assert len(worker._cancelled) == 5
    assert "j99" in worker._cancelled and "j0" not in worker._cancelled
