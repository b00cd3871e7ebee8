import asyncio
import time
from typing import Any

from ojs_amqp.core.job import Job, JobState
from ojs_amqp.engine.dispatch import Arrivals, Lease, ReadyBuffers
from ojs_amqp.engine.dispatch import Buffered as Delivery
from ojs_amqp.engine.events import EventFilter, EventLog


def _delivery(job_id: str, priority: int = 0, queue: str = "q") -> Delivery:
    message: Any = object()
    job = Job(id=job_id, type="t.x", queue=queue, args=[], state=JobState.AVAILABLE,
              created_at_ms=0, priority=priority)  # fmt: skip
    return Delivery(job, queue, message)


def test_buffers_hand_out_higher_priority_first_then_arrival_order() -> None:
    buffers = ReadyBuffers()
    for job_id, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -3)]:
        buffers.add(_delivery(job_id, priority))
    order = [buffers.pop("q").job_id for _ in range(5)]  # type: ignore[union-attr]
    assert order == ["b", "d", "a", "c", "e"]
    assert buffers.pop("q") is None


def test_a_removed_job_is_never_handed_out() -> None:
    buffers = ReadyBuffers()
    buffers.add(_delivery("a"))
    buffers.add(_delivery("b"))
    assert buffers.remove("a") is not None
    assert buffers.pop("q").job_id == "b"  # type: ignore[union-attr]
    assert buffers.pop("q") is None


def test_an_empty_queue_with_a_job_on_its_way_is_awaited_until_it_arrives() -> None:
    buffers = ReadyBuffers()
    job = _delivery("a").job
    buffers.expect(job)
    assert buffers.awaiting(["q"])
    assert not buffers.awaiting(["other"])
    assert buffers.take_expected("q", "a") is job
    buffers.add(_delivery("a"))
    assert not buffers.awaiting(["q"])


def test_a_queue_with_buffered_jobs_is_not_awaited_and_old_expectations_expire() -> None:
    buffers = ReadyBuffers()
    buffers.add(_delivery("a"))
    buffers.expect(_delivery("b").job)
    assert not buffers.awaiting(["q"])  # something to hand out already
    assert buffers.pop("q") is not None
    assert buffers.awaiting(["q"])
    assert not buffers.awaiting(["q"], max_age_s=-1)  # stale: forgotten
    assert buffers.take_expected("q", "b") is None


def _job(queue: str, job_type: str = "t.x") -> Job:
    return Job(id="id-" + queue, type=job_type, queue=queue, args=[], state=JobState.AVAILABLE,
               created_at_ms=0)  # fmt: skip


def test_event_query_filters_by_type_and_queue_and_pages_with_a_cursor() -> None:
    log = EventLog()
    for i in range(5):
        log.emit("job.enqueued", _job("a"), i)
        log.emit("job.completed", _job("b"), i, duration_ms=1)
    completed_b = EventFilter(types=frozenset({"job.completed"}), queues=frozenset({"b"}))
    events, cursor, more = log.query(completed_b, limit=3)
    assert [e["type"] for e in events] == ["job.completed"] * 3 and more
    assert events[0]["data"]["duration_ms"] == 1 and events[0]["data"]["queue"] == "b"
    rest, _, more = log.query(EventFilter(types=frozenset({"job.completed"})), after=cursor)
    assert len(rest) == 2 and not more


async def test_a_subscription_gets_matching_events_live_and_replays_from_a_cursor() -> None:
    log = EventLog()
    log.emit("job.enqueued", _job("a"), 1)
    sub = log.subscribe(EventFilter(queues=frozenset({"a"})), after=0)
    log.emit("job.enqueued", _job("b"), 2)
    log.emit("job.completed", _job("a"), 3)
    got = sub.feed.get_nowait()
    assert got is not None and got.type == "job.completed"
    assert sub.feed.empty()
    replay = log.subscribe(EventFilter(), after=1)
    assert [replay.feed.get_nowait().type for _ in range(2)] == ["job.enqueued", "job.completed"]  # type: ignore[union-attr]
    sub.close()
    log.emit("job.started", _job("a"), 4)
    assert sub.feed.empty()


async def test_a_slow_subscriber_is_told_about_the_events_it_lost() -> None:
    log = EventLog()
    sub = log.subscribe(EventFilter(), capacity=2)
    for i in range(5):
        log.emit("job.enqueued", _job("q"), i)
    assert sub.feed.get_nowait() is not None and sub.feed.get_nowait() is not None
    log.emit("job.completed", _job("q"), 9)
    assert sub.feed.get_nowait() is None  # the gap marker, then live events again
    assert sub.feed.get_nowait().type == "job.completed"  # type: ignore[union-attr]
    assert sub.feed.empty()


async def test_an_arrival_wakes_the_longest_waiting_fetch_of_its_queue_and_no_other() -> None:
    arrivals = Arrivals()
    order: list[str] = []

    async def fetcher(name: str, queues: list[str]) -> None:
        await arrivals.wait(queues, time.monotonic() + 5)
        order.append(name)

    tasks = [asyncio.create_task(fetcher(n, q)) for n, q in
             [("first", ["q"]), ("second", ["q"]), ("elsewhere", ["other"])]]  # fmt: skip
    await asyncio.sleep(0)
    arrivals.arrived("q")
    await asyncio.sleep(0.01)
    assert order == ["first"]
    arrivals.arrived("q")
    await asyncio.sleep(0.01)
    assert order == ["first", "second"]
    arrivals.arrived("q")  # nobody waits on q any more: nothing happens
    await asyncio.sleep(0.01)
    assert order == ["first", "second"] and not tasks[2].done()
    tasks[2].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert not arrivals._waiting  # every wait cleaned up after itself


async def test_a_fetch_waiting_on_two_queues_is_woken_once_and_a_deadline_ends_a_wait() -> None:
    arrivals = Arrivals()
    started = time.monotonic()
    await arrivals.wait(["a", "b"], started + 0.05)  # nothing arrives: the deadline ends it
    assert time.monotonic() - started >= 0.045
    both = asyncio.create_task(arrivals.wait(["a", "b"], time.monotonic() + 5))
    await asyncio.sleep(0)
    arrivals.arrived("b")
    await asyncio.wait_for(both, 1)
    arrivals.arrived("a")  # the woken fetch is gone from a's waiters too
    assert not arrivals._waiting


def test_deliveries_handed_back_for_age_keep_their_place_in_line_when_they_return() -> None:
    buffers = ReadyBuffers()
    old, young = _delivery("old"), _delivery("young")
    old.since = time.monotonic() - 100
    buffers.add(old)
    buffers.add(young)
    assert [d.job_id for d in buffers.take_older_than(time.monotonic() - 50)] == ["old"]
    assert buffers.sizes() == {"q": 1}
    buffers.add(_delivery("old"))  # delivered again by the broker, after "young"
    assert [buffers.pop("q").job_id for _ in range(2)] == ["old", "young"]  # type: ignore[union-attr]


def test_a_lease_is_handed_over_before_its_delivery_is_held_too_long() -> None:
    job = _delivery("a").job
    now = time.monotonic()
    lease = Lease(job, "w", object(), 30_000, now + 30, now + 1800)  # type: ignore[arg-type]
    lease.held_since = now
    assert lease.next_event(hold_s=600) == (now + 30, "visibility")  # the deadline comes first
    lease.visibility_deadline = now + 3600  # extended by heartbeats
    assert lease.next_event(hold_s=600) == (now + 600, "handover")
    lease.message, lease.held_since = None, None  # handed over: only deadlines are left
    assert lease.next_event(hold_s=600) == (now + 1800, "timeout")


def test_a_job_being_renewed_is_awaited_even_when_others_are_buffered() -> None:
    # Given a queue with one job buffered and one taken out to be renewed
    buffers = ReadyBuffers()
    old, young = _delivery("old", priority=5), _delivery("young")
    old.since = time.monotonic() - 100
    buffers.add(old)
    buffers.add(young)
    buffers.take_older_than(time.monotonic() - 50)

    # Then FETCH waits for the renewed copy (it may outrank what is buffered), until it is
    # buffered again or the wait grows stale
    assert buffers.awaiting(["q"])
    assert not buffers.awaiting(["other"])
    buffers.add(_delivery("old", priority=5))
    assert not buffers.awaiting(["q"])
    buffers.take_older_than(time.monotonic() + 1)
    assert not buffers.awaiting(["q"], max_age_s=-1)


def test_a_closing_gateway_takes_its_jobs_in_the_order_fetch_would_hand_them_out() -> None:
    buffers = ReadyBuffers()
    for job_id, priority in [("a", 0), ("b", 5), ("c", 0), ("x", 9), ("e", -3)]:
        buffers.add(_delivery(job_id, priority, "other" if job_id == "x" else "q"))
    assert [d.job_id for d in buffers.take_queue("q")] == ["b", "a", "c", "e"]
    assert buffers.sizes() == {"other": 1}
    assert buffers.pop("q") is None
