"""Quorum-queue delivery limits on the broker under test (docs/operations.md#delivery-limits).

Every return to a quorum queue (reject or nack with requeue, a closed channel, a lost
connection) counts against its delivery limit: 20 by default on RabbitMQ 4.x, none on 3.10
unless a `delivery-limit` policy sets one. The daemon's own handling of buffered jobs must
never count (they are renewed, not returned), while a native worker that dies on a job
again and again ends it `discarded` with error code `delivery_limit`.

On 3.10 the tests that need a limit set one by policy on their own queue, so the same code
is tested on both brokers. `OJS_TEST_RABBITMQCTL` names the `rabbitmqctl` of the broker under
test (e.g. `rabbitmqctl4` for the 4.0.5 node), as for the rest of the harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiormq
import pytest

from ojs_amqp.amqp.transport import AmqpTransport
from ojs_amqp.core.job import JobState
from ojs_amqp.engine.jobs import JobEngine
from tests.conftest import SESSION_PREFIX
from tests.daemon import RABBITMQCTL, Daemon, request

#: RabbitMQ 4.x's default delivery limit for quorum queues; set by policy on 3.10.
DEFAULT_LIMIT = 20


def _ctl(*args: str) -> str:
    done = subprocess.run(
        [*RABBITMQCTL, *args], capture_output=True, text=True, check=False, timeout=120
    )
    return done.stdout + done.stderr


@contextlib.contextmanager
def delivery_limit_policy(queue_name: str, limit: int) -> Iterator[None]:
    """A `delivery-limit` policy on exactly one queue, removed afterwards."""
    name = f"{queue_name}-delivery-limit"
    pattern = f"^{re.escape(queue_name)}$"
    out = _ctl("set_policy", name, pattern, f'{{"delivery-limit":{limit}}}',
               "--apply-to", "queues", "--priority", "100")  # fmt: skip
    assert "Setting policy" in out, out
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # policies apply asynchronously
            listing = _ctl("-q", "list_queues", "name", "policy")
            if any(line.split("\t") == [queue_name, name] for line in listing.splitlines()):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"policy {name} never applied to {queue_name}")
        yield
    finally:
        _ctl("clear_policy", name)


def _is_4x(engine: JobEngine) -> bool:
    return engine.broker.server_version.split(".")[0] not in ("3", "unknown")


def _limit_unless_4x(engine: JobEngine, queue: str) -> contextlib.AbstractContextManager[None]:
    """4.x: its default limit; 3.10 (no default): the same limit by policy."""
    if _is_4x(engine):
        return contextlib.nullcontext()
    return delivery_limit_policy(engine.broker.topology.job_queue(queue), DEFAULT_LIMIT)


async def _until(check: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _metric(engine: JobEngine, line_start: str) -> float:
    for line in engine.metrics.render().decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _buffered(engine: JobEngine, queue: str, count: int) -> None:
    async def full() -> bool:
        return engine.gateway.buffers.sizes().get(queue, 0) == count

    await _until(full, 10, f"{count} buffered deliveries on {queue}")


def _buffered_delivery_counts(engine: JobEngine) -> list[int]:
    return [d.message.returns for d in engine.gateway.buffers._entries.values()]


async def _push_mixed(engine: JobEngine, queue: str, count: int) -> list[str]:
    """Jobs of three priorities, pushed low first, so FIFO and priority both show."""
    ids = []
    for i in range(count):
        job = await engine.push({"type": "dl.wait", "args": [i], "queue": queue,
                                 "priority": (0, 5, -5)[i % 3]})  # fmt: skip
        ids.append(job.id)
    return ids


@pytest.fixture
def queue() -> str:
    return f"dl{uuid.uuid4().hex[:8]}"


async def test_renewing_buffered_jobs_never_counts_against_the_delivery_limit(
    live_engine: JobEngine, queue: str
) -> None:
    # Given 12 jobs held in the gateway buffer with the default settings and a delivery
    # limit of 20 (4.x's default; a policy on 3.10)
    await live_engine.ensure_queue(queue)
    with _limit_unless_4x(live_engine, queue):
        ids = await _push_mixed(live_engine, queue, 12)
        await live_engine.gateway.open_queue(queue)  # as the first FETCH does
        await _buffered(live_engine, queue, 12)

        # When they sit there through 25 refreshes (10 min of --delivery-hold-ms each: more
        # than four hours of waiting, compressed by ageing the deliveries)
        for _ in range(25):
            for delivery in live_engine.gateway.buffers._entries.values():
                delivery.since -= live_engine.settings.delivery_hold_ms / 1000 + 1
            await live_engine.gateway.refresh_held()
            await _buffered(live_engine, queue, 12)

        # Then each is a fresh message the broker never counted a return of, all still
        # available, none dead-lettered, and FETCH hands them out by priority, then FIFO
        assert _buffered_delivery_counts(live_engine) == [0] * 12
        assert _metric(live_engine, 'ojs_amqp_deliveries_renewed_total{reason="hold"}') == 300
        for job_id in ids:
            assert (await live_engine.get(job_id)).state is JobState.AVAILABLE
        assert (await live_engine.dead_letters(queue, 100, 0))[1] == 0
        fetched = await live_engine.fetch([queue], 12, "w1", None)
        expected = sorted(range(12), key=lambda i: (-(0, 5, -5)[i % 3], i))
        assert [j.id for j in fetched] == [ids[i] for i in expected]


async def test_closing_and_reopening_a_gateway_never_counts_against_the_delivery_limit(
    live_engine: JobEngine, queue: str
) -> None:
    # Given 9 waiting jobs and a delivery limit of 20
    await live_engine.ensure_queue(queue)
    job_queue = live_engine.broker.topology.job_queue(queue)
    with _limit_unless_4x(live_engine, queue):
        ids = await _push_mixed(live_engine, queue, 9)

        # When a gateway opens on them and closes idle 25 times (an HTTP worker that comes
        # by now and then, on a slow queue)
        for _ in range(25):
            await live_engine.gateway.open_queue(queue)
            await _buffered(live_engine, queue, 9)
            live_engine.gateway.open[queue] = 0.0  # idle since long ago
            await live_engine.gateway.close_idle()
            assert not live_engine.broker.consuming(job_queue)
            assert live_engine.gateway.buffers.sizes().get(queue, 0) == 0

        # Then nothing was returned to the broker: every job comes back as a fresh message,
        # still available, in the order FETCH hands out, none dead-lettered
        assert (
            _metric(live_engine, 'ojs_amqp_deliveries_renewed_total{reason="gateway_close"}') == 225
        )
        await live_engine.gateway.open_queue(queue)
        await _buffered(live_engine, queue, 9)
        assert _buffered_delivery_counts(live_engine) == [0] * 9
        assert (await live_engine.dead_letters(queue, 100, 0))[1] == 0
        fetched = await live_engine.fetch([queue], 9, "w1", None)
        expected = sorted(range(9), key=lambda i: (-(0, 5, -5)[i % 3], i))
        assert [j.id for j in fetched] == [ids[i] for i in expected]


async def _take_and_die(url: str, queue_name: str, wait_s: float) -> bool:
    """A native worker that takes one job and dies with it (its connection drops without an
    ack); False if no job came within `wait_s`."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=1)
        got: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_message(_: aiormq.abc.DeliveredMessage) -> None:
            if not got.done():
                got.set_result(None)

        await channel.basic_consume(queue_name, on_message, no_ack=False)
        try:
            await asyncio.wait_for(got, wait_s)
            return True
        except TimeoutError:
            return False
    finally:
        await connection.close()


async def test_redelivered_job_reaching_the_gateway_is_renewed(
    broker: str, live_engine: JobEngine, queue: str
) -> None:
    # Given a job a native worker took and died with three times (x-delivery-count 3)
    await live_engine.ensure_queue(queue)
    job_queue = live_engine.broker.topology.job_queue(queue)
    job = await live_engine.push({"type": "dl.crash", "args": [], "queue": queue})
    for _ in range(3):
        assert await _take_and_die(broker, job_queue, 5)

    # When the daemon's gateway receives it
    await live_engine.gateway.open_queue(queue)
    await _buffered(live_engine, queue, 1)

    # Then it holds a fresh copy (its count starts over: returns by the daemon, a restart or
    # a lost connection, never add up), and the job is still the same available job
    assert _buffered_delivery_counts(live_engine) == [0]
    assert _metric(live_engine, 'ojs_amqp_deliveries_renewed_total{reason="redelivered"}') == 1
    [fetched] = await live_engine.fetch([queue], 1, "w1", None)
    assert fetched.id == job.id


async def test_a_job_that_kills_its_native_worker_ends_discarded_by_the_delivery_limit(
    broker: str, live_engine: JobEngine, queue: str
) -> None:
    # Given a job on a queue only native workers consume, with a delivery limit of 20
    await live_engine.ensure_queue(queue)
    job_queue = live_engine.broker.topology.job_queue(queue)
    with _limit_unless_4x(live_engine, queue):
        job = await live_engine.push({"type": "dl.poison", "args": [], "queue": queue})

        # When native workers take it and die with it, 25 times over
        deliveries = 0
        for _ in range(25):
            if not await _take_and_die(broker, job_queue, 3 if deliveries > DEFAULT_LIMIT else 10):
                break
            deliveries += 1

        # Then the broker delivered it limit + 1 times and dead-lettered it, and the daemon
        # records it discarded with error code delivery_limit, listed as a dead letter
        assert deliveries == DEFAULT_LIMIT + 1

        async def discarded() -> bool:
            return (await live_engine.get(job.id)).state is JobState.DISCARDED

        await _until(discarded, 15, "the job to be discarded")
        stored = await live_engine.get(job.id)
        assert stored.error is not None and stored.error["code"] == "delivery_limit"
        assert "delivery limit" in stored.error["message"]
        if _is_4x(live_engine):  # 4.x says how often; 3.10's dead letter carries count 0
            assert f"after {DEFAULT_LIMIT + 1} deliveries" in stored.error["message"]
        assert stored.dead_letter is True
        dead, total = await live_engine.dead_letters(queue, 10, 0)
        assert total == 1 and dead[0].id == job.id
        assert _metric(live_engine, f'ojs_job_delivery_limit_total{{queue="{queue}"}}') == 1
        discards = f'ojs_job_discarded_total{{dead_letter="true",queue="{queue}",type="dl.poison"}}'
        assert _metric(live_engine, discards) == 1


def test_jobs_waiting_behind_a_short_hold_are_never_discarded(
    make_daemon: Callable[..., Daemon], queue: str
) -> None:
    # Given the scenario, shortened: a daemon with --delivery-hold-ms 1000, 20 jobs
    # pushed to one queue, and a delivery limit of 3 on it (by policy, on any broker: with
    # returns every 1.25 s, the old refresh dead-lettered them within 5 s)
    daemon = make_daemon("--delivery-hold-ms", "1000")
    ids = []
    for i in range(20):
        status, body = request("POST", f"{daemon.url}/ojs/v1/jobs",
                               {"type": "dl.wait", "args": [i], "queue": queue})  # fmt: skip
        assert status == 201, body
        ids.append(body["job"]["id"])
    with delivery_limit_policy(f"{daemon.prefix}.ojs.queue.{queue}", 3):
        # When a worker keeps the gateway open with one FETCH a second, for 10 s
        fetched = 0
        for _ in range(10):
            status, body = request(
                "POST", f"{daemon.url}/ojs/v1/workers/fetch",
                {"queues": [queue], "count": 1, "worker_id": "w1",
                 "visibility_timeout_ms": 600_000},
            )  # fmt: skip
            assert status == 200, body
            fetched += len(body["jobs"])
            time.sleep(1)

        # Then every job is active (fetched) or available, none discarded, and the
        # refresh did renew them (many times)
        states: dict[str, int] = {}
        for job_id in ids:
            _, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{job_id}")
            states[body["job"]["state"]] = states.get(body["job"]["state"], 0) + 1
        assert states == {"active": fetched, "available": 20 - fetched}
        assert fetched == 10
        _, metrics = _raw(f"{daemon.url}/metrics")
        renewed = re.search(r'ojs_amqp_deliveries_renewed_total\{reason="hold"\} (\S+)', metrics)
        assert renewed is not None and float(renewed.group(1)) >= 3 * (20 - fetched)


def _raw(url: str) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode()


async def _submit(url: str, exchange: str, routing_key: str, body: bytes) -> None:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.basic_publish(
            body, exchange=exchange, routing_key=routing_key,
            properties=aiormq.spec.Basic.Properties(delivery_mode=2),
        )  # fmt: skip
    finally:
        await connection.close()


def test_a_submission_waiting_for_room_is_never_dropped_at_the_delivery_limit(
    broker: str, make_daemon: Callable[..., Daemon], queue: str
) -> None:
    # Given a queue at its --max-depth bound of 1, and a delivery limit of 2 on ojs.submit (a
    # quorum queue with no dead-letter exchange: past its limit a message is dropped)
    daemon = make_daemon("--max-depth", f"1000,{queue}=1")
    status, body = request("POST", f"{daemon.url}/ojs/v1/jobs",
                           {"type": "dl.first", "args": [], "queue": queue})  # fmt: skip
    assert status == 201, body
    first = body["job"]["id"]
    with delivery_limit_policy(f"{daemon.prefix}.ojs.submit", 2):
        # When a submission for that queue arrives and waits in ojs.submit for 6 s (handed
        # back once a second while the queue is full)
        submission = b'{"type": "dl.second", "args": [7]}'
        asyncio.run(_submit(broker, f"{daemon.prefix}.ojs.exchange.submit", queue, submission))
        time.sleep(6)

        # Then, once the queue has room, it is accepted: it was never dropped
        assert request("DELETE", f"{daemon.url}/ojs/v1/jobs/{first}")[0] == 200
        deadline = time.monotonic() + 15
        jobs: list[dict[str, object]] = []
        while not jobs and time.monotonic() < deadline:
            fetch = {"queues": [queue], "count": 1, "worker_id": "w1"}
            status, body = request("POST", f"{daemon.url}/ojs/v1/workers/fetch", fetch)
            assert status == 200, body
            jobs = body["jobs"]
        assert [(j["type"], j["args"]) for j in jobs] == [("dl.second", [7])]


async def test_a_fetch_while_its_gateway_closes_gets_a_job_and_the_queue_stays_consumed(
    live_engine: JobEngine, queue: str
) -> None:
    # Given a gateway with 5 jobs buffered, idle long enough to be closed
    await live_engine.ensure_queue(queue)
    ids = await _push_mixed(live_engine, queue, 5)
    await live_engine.gateway.open_queue(queue)
    await _buffered(live_engine, queue, 5)
    live_engine.gateway.open[queue] = 0.0

    # When a FETCH comes while the close is under way
    closing = asyncio.create_task(live_engine.gateway.close_idle())
    await asyncio.sleep(0)
    fetched = await live_engine.fetch([queue], 1, "w1", None)
    await closing

    # Then it is served from the reopened gateway, which goes on consuming the queue
    assert live_engine.broker.consuming(live_engine.broker.topology.job_queue(queue))
    more = fetched + await live_engine.fetch([queue], 5, "w1", None)
    assert sorted(j.id for j in more) == sorted(ids)


def _close_connection(name: str) -> None:
    """Make the broker drop the connection called `name` (as a network fault would)."""
    listing = _ctl("-q", "list_connections", "pid", "client_properties")
    pids = [line.split("\t", 1)[0] for line in listing.splitlines()
            if f'"connection_name","{name}"' in line]  # fmt: skip
    assert len(pids) == 1, listing
    _ctl("-q", "close_connection", pids[0], "test: connection lost")


async def test_what_the_daemon_held_when_its_connection_dropped_comes_back_renewed(
    broker: str, tmp_path: Path, queue: str
) -> None:
    from ojs_amqp.amqp.broker import Broker
    from ojs_amqp.amqp.topology import Topology
    from ojs_amqp.engine.events import EventLog
    from ojs_amqp.metrics import Metrics
    from ojs_amqp.settings import Settings
    from ojs_amqp.store.sqlite import SqliteJobStore

    # Given an engine whose connections have names of their own, holding 3 buffered jobs
    # and one leased to an HTTP worker
    prefix = f"{SESSION_PREFIX}-dlr-{uuid.uuid4().hex[:6]}"
    store = SqliteJobStore(str(tmp_path / f"{prefix}.db"))
    await store.open()
    metrics = Metrics()
    bus = Broker(broker, Topology(prefix), connection_name=prefix, observer=metrics)
    await bus.start(attempts=3)
    transport = AmqpTransport(bus, Settings().prefetch)
    engine = JobEngine(Settings(prefix=prefix), store, transport, EventLog(), metrics,
                       clock=lambda: time.time_ns() // 1_000_000)  # fmt: skip
    try:
        await engine.start()
        await engine.ensure_queue(queue)
        leased_id = (await engine.push({"type": "dl.lease", "args": [], "queue": queue})).id
        [leased] = await engine.fetch([queue], 1, "w1", 600_000)
        assert leased.id == leased_id
        await _push_mixed(engine, queue, 3)
        await _buffered(engine, queue, 3)

        # When the broker drops the daemon's consume connection (every delivery it held
        # goes back, counted once) and the daemon reconnects
        await asyncio.to_thread(_close_connection, f"{prefix}-consume")

        async def reconnected() -> bool:
            return bus.reconnections >= 1

        await _until(reconnected, 30, "the reconnect")
        await _buffered(engine, queue, 3)

        # Then the buffered jobs come back as fresh copies (count 0), and the lease's
        # redelivered message is handed over at once (acked, a ladder timer instead): no
        # count is left to add up; the worker still acks its job
        assert _buffered_delivery_counts(engine) == [0] * 3
        assert _metric(engine, 'ojs_amqp_deliveries_renewed_total{reason="redelivered"}') == 3

        async def handed_over() -> bool:
            lease = engine.leases.get(leased_id)
            return lease is not None and lease.message is None

        await _until(handed_over, 10, "the lease's redelivery to be handed over")
        parked = 'ojs_amqp_messages_published_total{exchange_kind="delay"}'
        assert _metric(engine, parked) == 1  # its lease timer (none before the drop)
        assert (await engine.ack(leased_id, {"ok": True}, "w1")).state is JobState.COMPLETED
    finally:
        await engine.close()
        await bus.delete_everything()
        await bus.close()
        await store.close()


async def test_a_held_timer_the_broker_returned_is_published_again_and_still_fires(
    broker: str, tmp_path: Path, queue: str
) -> None:
    from ojs_amqp.amqp.broker import Broker
    from ojs_amqp.amqp.topology import Topology
    from ojs_amqp.core.times import format_ms
    from ojs_amqp.engine.events import EventLog
    from ojs_amqp.metrics import Metrics
    from ojs_amqp.settings import Settings
    from ojs_amqp.store.sqlite import SqliteJobStore

    # Given a job due in 1.5 s, whose timer the daemon holds unacked from ojs.delay.due (a
    # quorum queue with no dead-letter exchange: past its limit a timer would be dropped)
    prefix = f"{SESSION_PREFIX}-dlt-{uuid.uuid4().hex[:6]}"
    store = SqliteJobStore(str(tmp_path / f"{prefix}.db"))
    await store.open()
    metrics = Metrics()
    bus = Broker(broker, Topology(prefix), observer=metrics)
    await bus.start(attempts=3)
    transport = AmqpTransport(bus, Settings().prefetch)
    engine = JobEngine(Settings(prefix=prefix), store, transport, EventLog(), metrics,
                       clock=lambda: time.time_ns() // 1_000_000)  # fmt: skip
    parked = 'ojs_amqp_messages_published_total{exchange_kind="delay"}'
    try:
        await engine.start()
        due = time.time_ns() // 1_000_000 + 1500
        job = await engine.push({"type": "dl.timer", "args": [], "queue": queue,
                                 "scheduled_at": format_ms(due)})  # fmt: skip

        async def held() -> bool:
            return len(engine.timers) == 1

        await _until(held, 1.2, "the timer to be held")
        assert _metric(engine, parked) == 1

        # When its consumer channel goes (the broker returns the timer, counted once) and
        # the daemon consumes the due queue again
        due_queue = bus.topology.due_queue
        await bus.stop_consumer(due_queue)
        engine.timers.let_go()
        await engine.timers.start()

        # Then the returned timer is published again as a fresh message (held anew), and the
        # job still becomes available at its time
        async def available() -> bool:
            return (await engine.get(job.id)).state is JobState.AVAILABLE

        await _until(available, 10, "the job to become available")
        assert _metric(engine, parked) == 2
        assert time.time_ns() // 1_000_000 >= due
    finally:
        await engine.close()
        await bus.delete_everything()
        await bus.close()
        await store.close()
