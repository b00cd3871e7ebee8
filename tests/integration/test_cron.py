"""Cron against the real broker and store, with an injected clock for the DST crossing."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson

from ojs_amqp.engine.cron import CronScheduler
from ojs_amqp.engine.events import EventFilter
from ojs_amqp.engine.jobs import JobEngine
from tests.daemon import Daemon, request
from tests.integration.conftest import FakeClock

NY = ZoneInfo("America/New_York")


def _leader(engine: JobEngine, clock: FakeClock) -> CronScheduler:
    scheduler = CronScheduler(engine, engine.store, engine.transport, clock=clock)
    scheduler._last_token = time.monotonic() + 3600  # lead for the whole test
    return scheduler


async def _cron_jobs(engine: JobEngine, name: str) -> list[str]:
    jobs = []
    rows = engine.store.db.execute("SELECT doc FROM jobs").fetchall()  # type: ignore[attr-defined]
    for (doc,) in rows:
        record = orjson.loads(doc)
        if record["meta"].get("cron_name") == name:
            jobs.append(record["meta"]["cron_triggered_at"])
    return sorted(jobs)


async def test_a_daily_tick_in_the_hour_skipped_by_spring_forward_fires_once_after_the_jump(
    engine: tuple[JobEngine, FakeClock],
) -> None:
    eng, clock = engine
    cron = _leader(eng, clock)
    # Given a 02:30 New York schedule registered the day before the clocks spring forward
    registered, created = await cron.register(
        {"name": "nightly", "expression": "30 2 * * *", "timezone": "America/New_York",
         "overlap_policy": "allow",
         "job_template": {"type": "report.nightly", "args": [], "options": {"queue": "cron-q"}}}
    )  # fmt: skip
    assert created
    # 02:30 does not exist on 2026-03-08: the run is at 03:00 EDT = 07:00Z
    assert registered["next_run_at_ms"] == int(
        datetime(2026, 3, 8, 3, 0, tzinfo=NY).timestamp() * 1000
    )

    # When the clock passes the jump, then the next day's 02:30
    clock.set(datetime(2026, 3, 8, 3, 0, 5, tzinfo=NY))
    await cron.tick()
    await cron.tick()  # a second tick at the same moment fires nothing more
    clock.set(datetime(2026, 3, 9, 2, 30, 5, tzinfo=NY))
    await cron.tick()

    # Then exactly two jobs exist, for 07:00Z and for 06:30Z the next day
    assert await _cron_jobs(eng, "nightly") == [
        "2026-03-08T07:00:00.000Z",
        "2026-03-09T06:30:00.000Z",
    ]
    stored = await eng.store.get_cron("nightly")
    assert stored is not None and stored["run_count"] == 2


async def test_a_tick_fired_twice_on_one_store_makes_one_job(
    engine: tuple[JobEngine, FakeClock],
) -> None:
    """The idempotence a failover relies on: two schedulers sharing a store (as a daemon and
    its restart do) fire the same tick; the derived job id makes it one job."""
    eng, clock = engine
    first, second = _leader(eng, clock), _leader(eng, clock)
    await first.register(
        {"name": "twice", "expression": "* * * * *",
         "job_template": {"type": "t.twice", "args": [], "options": {"queue": "cron-q"}}}
    )  # fmt: skip
    clock.ms += 61_000
    due = await eng.store.due_crons(clock())
    # Both "daemons" saw the tick as due before either recorded it
    await first._fire(due[0], clock())
    await second._fire(due[0], clock())
    assert len(await _cron_jobs(eng, "twice")) == 1


async def test_overlap_skip_does_not_enqueue_while_the_previous_run_is_unfinished(
    engine: tuple[JobEngine, FakeClock],
) -> None:
    eng, clock = engine
    cron = _leader(eng, clock)
    await cron.register(
        {"name": "slow", "expression": "* * * * *", "overlap_policy": "skip",
         "job_template": {"type": "t.slow", "args": [], "options": {"queue": "cron-q"}}}
    )  # fmt: skip
    for _ in range(3):
        clock.ms += 60_000
        await cron.tick()
    assert len(await _cron_jobs(eng, "slow")) == 1
    skipped, _, _ = eng.events.query(EventFilter(types=frozenset({"cron.skipped"})))
    assert len(skipped) == 2


def test_two_daemons_with_their_own_stores_on_one_prefix_fire_each_tick_once(
    make_daemon: Callable[..., Daemon],
) -> None:
    """With separate stores nothing but leadership (single active consumer of
    ojs.cron.leader) keeps the second daemon from firing the same schedule."""
    # Given two daemons on one topology prefix, each with its own store, and the same
    # every-second schedule registered on both
    first = make_daemon()
    second = make_daemon(start=False)
    second.prefix = first.prefix  # one topology; its own store, port and log
    second.start()
    schedule = {
        "name": "shared",
        "expression": "@every 1s",
        "overlap_policy": "allow",
        "job_template": {"type": "t.shared", "args": [], "options": {"queue": "cron-2"}},
    }
    for daemon in (first, second):
        status, body = request("POST", f"{daemon.url}/ojs/v1/cron", schedule)
        assert status in (200, 201), body
    # When several ticks pass
    time.sleep(5)
    runs = {}
    for daemon in (first, second):
        status, body = request("GET", f"{daemon.url}/ojs/v1/cron/shared")
        assert status == 200, body
        runs[daemon.port] = body["cron"].get("run_count", 0)
    # Then exactly one daemon fired them: one job per tick, not two
    fired = sorted(runs.values())
    assert fired[0] == 0 and fired[1] >= 3, f"run counts per daemon: {runs}"
