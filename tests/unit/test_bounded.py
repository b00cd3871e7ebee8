"""Broker waits end at their bound, whatever the call does when cancelled, and say what they
waited for; a stall is reported until answered or forgotten."""

from __future__ import annotations

import asyncio
import time

import pytest

from ojs_amqp.amqp import bounded, stalls
from ojs_amqp.amqp.bounded import handshake_stalled, within
from ojs_amqp.amqp.broker import Broker
from ojs_amqp.amqp.frames import Handshake
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.errors import BackendUnavailable, BrokerStalled
from ojs_amqp.sdk.transport import connect


async def _stubborn(cleanup_s: float, finished: list[bool]) -> None:
    """A call that takes its time to end once cancelled (as an aiormq RPC sending its
    Channel.Close to a broker that reads nothing)."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.sleep(cleanup_s)
        finished.append(True)
        raise


def test_within_raises_at_its_bound_even_if_the_cancelled_call_lingers() -> None:
    async def scenario() -> tuple[BrokerStalled, float, list[bool]]:
        finished: list[bool] = []
        started = time.monotonic()
        with pytest.raises(BrokerStalled) as caught:
            await within(0.1, "a declare", _stubborn(0.5, finished))
        took = time.monotonic() - started
        assert not finished  # still cleaning up in the background
        await asyncio.sleep(0.6)
        return caught.value, took, finished

    error, took, finished = asyncio.run(scenario())
    assert took < 0.3, took
    assert finished == [True]  # the abandoned call was cancelled and ran its course
    assert error.message == "the broker did not answer a declare within 0.1 s"
    assert isinstance(error, BackendUnavailable) and error.http_status == 503
    assert error.details == {"waited_for": "a declare", "timeout_ms": 100}
    assert error.retry_after_s is not None


def test_within_gives_the_answer_when_it_comes_in_time() -> None:
    async def quick() -> int:
        await asyncio.sleep(0.01)
        return 7

    assert asyncio.run(within(1.0, "x", quick())) == 7


def test_a_timed_out_handshake_says_how_far_it_got() -> None:
    no_tcp = handshake_stalled(Handshake(), 10)
    assert no_tcp.message.startswith("the broker did not accept a TCP (or TLS) connection")
    silent = handshake_stalled(Handshake(transport_up=True), 10)
    assert silent.message.startswith(
        "the broker accepted the connection but did not answer the AMQP handshake within 10 s;"
        " a RabbitMQ out of file handles does this"
    )
    assert "see docs/operations.md" in silent.message
    assert silent.waited_for == "the AMQP handshake"
    partial = handshake_stalled(Handshake(transport_up=True, answered=True), 2.5)
    assert "began the AMQP handshake but did not finish it within 2.5 s" in partial.message


def test_a_silent_listener_is_reported_as_such() -> None:
    """The frame reader tells the attempt that TCP is up and no byte came."""

    async def scenario() -> BrokerStalled:
        accepted: list[asyncio.StreamWriter] = []

        async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(BrokerStalled) as caught:
                await connect(
                    f"amqp://guest:guest@127.0.0.1:{port}/", name="t", attempts=1,
                    attempt_timeout_s=0.3,
                )  # fmt: skip
            return caught.value
        finally:
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()

    error = asyncio.run(scenario())
    assert "accepted the connection but did not answer the AMQP handshake" in error.message


def test_a_stall_is_reported_until_answered_or_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stalls, "STALL_MEMORY_S", 0.2)

    async def scenario() -> list[str | None]:
        bus = Broker("amqp://guest:guest@127.0.0.1:1/", Topology("t"))
        seen: list[str | None] = [bus.stall]
        bus._stall_watch.stalled("confirm", bounded.stalled("a publish confirm", 10))
        bus._stall_watch.stalled("declare", bounded.stalled("the declare of queue q", 10))
        seen.append(bus.stall)
        bus._stall_watch.answered("confirm")
        seen.append(bus.stall)
        await asyncio.sleep(0.3)  # nothing declared since: forgotten
        seen.append(bus.stall)
        return seen

    seen = asyncio.run(scenario())
    assert seen == [
        None,
        "the broker did not answer a publish confirm within 10 s; "
        "the broker did not answer the declare of queue q within 10 s",
        "the broker did not answer the declare of queue q within 10 s",
        None,
    ]


class _FakeConnection:
    """Enough of an aio-pika connection for the probe: open, no aiormq link under it."""

    is_closed = False
    transport = None


def _probed(answers: bool) -> tuple[Broker, list[str]]:
    """A stall on a 'connected' broker whose probe round trip answers or hangs."""

    async def scenario() -> tuple[Broker, list[str]]:
        bus = Broker(
            "amqp://guest:guest@127.0.0.1:1/", Topology("t"),
            timeouts=bounded.BrokerTimeouts(rpc_s=0.2),
        )  # fmt: skip
        bus._pub_conn = bus._con_conn = _FakeConnection()  # type: ignore[assignment]
        bus.connected = True
        trips: list[str] = []

        async def round_trip(conn: object) -> None:
            trips.append("probe")
            if not answers:
                await asyncio.sleep(60)

        bus._stall_watch.round_trip = round_trip  # type: ignore[method-assign]
        bus._stall_watch.stalled("rpc", bounded.stalled("a ping", 10))
        bus._stall_watch.stalled("declare", bounded.stalled("the declare of queue q", 10))
        assert bus._probe is not None
        await bus._probe
        return bus, trips

    return asyncio.run(scenario())


def test_a_link_that_answers_the_probe_stays_up_and_reports_what_still_stalls() -> None:
    bus, trips = _probed(answers=True)
    assert trips == ["probe", "probe"]  # both connections
    assert bus.connected and not bus._lost.is_set()
    assert bus.stall == "the broker did not answer the declare of queue q within 10 s"


def test_a_link_that_does_not_answer_the_probe_is_treated_as_lost() -> None:
    bus, trips = _probed(answers=False)
    assert trips == ["probe"]  # the first silent connection decides
    assert not bus.connected and bus._lost.is_set()  # the reconnect loop takes over
