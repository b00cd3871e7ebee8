"""Fakes of the engine's ports, for fast deterministic tests (docs/architecture.md).

`FakeScheduler` (clock.py) is a clock and timers that move only when told; `MemoryTransport`
(transport.py) is an in-memory `JobTransport`, and `FakeBroker` what a test does to it:
deliveries, returns and outages, each when the test says. They are real implementations of
the ports, not mocks: the engine runs on them unchanged.
"""

from ojs_amqp.testing.clock import FakeScheduler
from ojs_amqp.testing.transport import FakeBroker, MemoryTransport, Message

__all__ = ["FakeBroker", "FakeScheduler", "MemoryTransport", "Message"]
