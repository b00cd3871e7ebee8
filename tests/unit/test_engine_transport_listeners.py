"""The AMQP transport's adaptation of Broker's hook lists to typed TransportListeners: OJS
queue names, and one policy for a listener that raises (logged, counted, never raised into
the broker's reconnect loop)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from ojs_amqp.amqp.broker import Broker
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.amqp.transport import AmqpTransport


@dataclass
class HookLists:
    """Broker's public hook lists, with no connection behind them."""

    topology: Topology = field(default_factory=lambda: Topology("unit"))
    on_connection_lost: list[Callable[[], None]] = field(default_factory=list)
    on_reconnected: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_consumer_restored: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)
    on_consumer_lost: list[Callable[[str], None]] = field(default_factory=list)
    connected: bool = True

    async def ensure_job_queue(self, queue: str) -> None:
        return None


class Heard:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []

    def _note(self, what: str, arg: Any = None) -> None:
        self.calls.append((what, arg))
        if self.fail:
            raise RuntimeError(f"{what} failed")

    def connection_lost(self) -> None:
        self._note("lost")

    async def reconnected(self) -> None:
        self._note("reconnected")

    def job_consumer_lost(self, queue: str) -> None:
        self._note("consumer_lost", queue)

    def due_consumer_lost(self) -> None:
        self._note("due_lost")

    async def job_queue_restored(self, queue: str) -> None:
        self._note("restored", queue)


async def test_a_listener_that_raises_is_counted_and_the_next_still_hears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = HookLists()
    transport = AmqpTransport(cast(Broker, hooks), prefetch=10)
    broken, fine = Heard(fail=True), Heard()
    transport.listen(broken)
    transport.listen(fine)
    await transport.declare_queue("emails")
    # When the broker runs each of its hooks (none of them raises into the broker)
    hooks.on_connection_lost[0]()
    await hooks.on_reconnected[0]()
    hooks.on_consumer_lost[0](hooks.topology.job_queue("emails"))
    hooks.on_consumer_lost[0](hooks.topology.due_queue)
    hooks.on_consumer_lost[0]("some-other-queue")  # not ours: nobody hears it
    await hooks.on_consumer_restored[0](hooks.topology.job_queue("emails"))
    # Then both heard everything in OJS terms, and each failure was counted and logged
    expected = [("lost", None), ("reconnected", None), ("consumer_lost", "emails"),
                ("due_lost", None), ("restored", "emails")]  # fmt: skip
    assert fine.calls == expected and broken.calls == expected
    assert transport.listeners.failures == 5
    assert "after a reconnect (Heard.reconnected) failed" in caplog.text
