"""Every RabbitMQ name and x-argument the daemon uses, computed from one optional prefix.

Pure functions of the settings: what lands on the broker can be read (and unit-tested) here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Delay ladder: level L waits 2^L units; 26 levels of 1 s reach 2^25 s (388 days) per hop,
#: and a longer wait simply rides the top level more than once.
LADDER_UNIT_MS = 1000
LADDER_LEVELS = 26


@dataclass(frozen=True, slots=True)
class Topology:
    prefix: str = ""

    def _n(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    # exchanges
    @property
    def direct_exchange(self) -> str:
        return self._n("ojs.exchange.direct")

    @property
    def dlx_exchange(self) -> str:
        return self._n("ojs.exchange.dlx")

    @property
    def events_exchange(self) -> str:
        """Topic exchange of OJS events, routing key `{event type}.{queue}`."""
        return self._n("ojs.exchange.events")

    @property
    def delay_exchange(self) -> str:
        return self._n("ojs.exchange.delay")

    # queues
    def job_queue(self, queue: str) -> str:
        return self._n(f"ojs.queue.{queue}")

    def dead_letter_queue(self, queue: str) -> str:
        return self._n(f"ojs.queue.dlx.{queue}")

    def ladder_queue(self, level: int) -> str:
        return self._n(f"ojs.delay.L{level:02d}")

    @property
    def due_queue(self) -> str:
        return self._n("ojs.delay.due")

    @property
    def leader_queue(self) -> str:
        """Single-active-consumer queue: the daemon it delivers to runs cron."""
        return self._n("ojs.cron.leader")

    def all_fixed_queues(self) -> list[str]:
        return [
            self.due_queue,
            self.leader_queue,
            *(self.ladder_queue(lv) for lv in range(LADDER_LEVELS)),
        ]

    # arguments
    def job_queue_arguments(self, queue: str) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dlx_exchange,
            "x-dead-letter-routing-key": queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    @staticmethod
    def dead_letter_queue_arguments() -> dict[str, Any]:
        return {"x-queue-type": "quorum"}

    def ladder_queue_arguments(self, level: int) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-message-ttl": ladder_wait_ms(level),
            "x-dead-letter-exchange": self.delay_exchange,
            "x-dead-letter-routing-key": DUE_ROUTING_KEY,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    @staticmethod
    def due_queue_arguments() -> dict[str, Any]:
        return {"x-queue-type": "quorum"}

    @staticmethod
    def leader_queue_arguments() -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-single-active-consumer": True,
            "x-message-ttl": LEADER_TOKEN_TTL_MS,
        }


DUE_ROUTING_KEY = "due"
LEADER_ROUTING_KEY = "cron.leader"
LEADER_TOKEN_TTL_MS = 5000


def ladder_routing_key(level: int) -> str:
    return f"L{level:02d}"


def ladder_wait_ms(level: int) -> int:
    return LADDER_UNIT_MS << level


#: Below this remainder the daemon holds the message itself (unacked, in the due queue)
#: and publishes it at the exact millisecond; above it, the message rides a ladder level.
HOLD_THRESHOLD_MS = 2 * LADDER_UNIT_MS


def ladder_level_for(remaining_ms: int) -> int | None:
    """The level to park a message in, or None when the daemon should hold it.

    Picks the longest wait that still leaves at least one unit of slack, so the message comes
    back early (never late by more than the hop latency) and the daemon finishes the wait
    exactly.
    """
    if remaining_ms <= HOLD_THRESHOLD_MS:
        return None
    budget = (remaining_ms - LADDER_UNIT_MS) // LADDER_UNIT_MS
    return min(budget.bit_length() - 1, LADDER_LEVELS - 1)
