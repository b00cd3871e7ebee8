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
class ExchangeSpec:
    name: str
    type: str  # direct, topic or fanout
    purpose: str


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A durable queue, its x-arguments, and its one binding ("" = the default exchange)."""

    name: str
    kind: str
    arguments: dict[str, Any]
    exchange: str = ""
    routing_key: str = ""


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

    @property
    def retry_exchange(self) -> str:
        """The binding's retry exchange (topic): key `{queue}.{delay_ms}`, fed into the ladder."""
        return self._n("ojs.exchange.retry")

    @property
    def submit_exchange(self) -> str:
        """Fanout for plain JSON envelopes from clients that do not speak the binding."""
        return self._n("ojs.exchange.submit")

    @property
    def workers_exchange(self) -> str:
        """Topic the daemon tells native workers through (key `cancel.{queue}`)."""
        return self._n("ojs.exchange.workers")

    # queues
    def job_queue(self, queue: str) -> str:
        return self._n(f"ojs.queue.{queue}")

    def dead_letter_queue(self, queue: str) -> str:
        return self._n(f"ojs.queue.dlx.{queue}")

    def control_queue(self, queue: str) -> str:
        """Per-queue control queue (AMQP-019/020): cancels, heartbeats and worker reports."""
        return self._n(f"ojs.queue.control.{queue}")

    @property
    def global_control_queue(self) -> str:
        """Control and RPC (INFO, CANCEL, hello) for callers that do not know a job's queue;
        reached through the default exchange by its name."""
        return self._n("ojs.control")

    @property
    def submit_queue(self) -> str:
        return self._n("ojs.submit")

    @property
    def retry_intake_queue(self) -> str:
        return self._n("ojs.retry")

    @property
    def rejected_queue(self) -> str:
        """Submissions and control messages the daemon could not accept, with the reason."""
        return self._n("ojs.rejected")

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
        return [spec.name for spec in self.fixed_queues()]

    # what is declared (the broker declares exactly this; `ojs-amqp topology` lists it)
    def exchanges(self) -> list[ExchangeSpec]:
        job, dead = self.job_queue("{queue}"), self.dead_letter_queue("{queue}")
        return [
            ExchangeSpec(self.direct_exchange, "direct",
                         f"jobs by queue name to {job}; control.{{queue}} to its control queue"),
            ExchangeSpec(self.dlx_exchange, "direct", f"dead letters, to {dead}"),
            ExchangeSpec(self.delay_exchange, "direct",
                         "delay ladder, due queue and cron leadership tokens"),
            ExchangeSpec(self.events_exchange, "topic",
                         "OJS events, key {event type}.{queue} (serve --events-exchange)"),
            ExchangeSpec(self.retry_exchange, "topic",
                         "binding retries, key {queue}.{delay_ms}, into the ladder"),
            ExchangeSpec(self.submit_exchange, "fanout",
                         "plain envelopes, validated and routed by the daemon"),
            ExchangeSpec(self.workers_exchange, "topic",
                         "daemon to native workers, key cancel.{queue}"),
        ]  # fmt: skip

    def fixed_queues(self) -> list[QueueSpec]:
        carrying = self.job_carrying_queue_arguments()
        control = self.control_queue_arguments()
        return [
            QueueSpec(self.due_queue, "due", self.due_queue_arguments(), self.delay_exchange,
                      DUE_ROUTING_KEY),
            QueueSpec(self.leader_queue, "cron-leader", self.leader_queue_arguments(),
                      self.delay_exchange, LEADER_ROUTING_KEY),
            QueueSpec(self.submit_queue, "submit", carrying, self.submit_exchange),
            QueueSpec(self.retry_intake_queue, "retry-intake", carrying, self.retry_exchange,
                      "#"),
            QueueSpec(self.global_control_queue, "control", control),
            QueueSpec(self.rejected_queue, "rejected", control),
            *(QueueSpec(self.ladder_queue(level), "delay-ladder",
                        self.ladder_queue_arguments(level), self.delay_exchange,
                        ladder_routing_key(level)) for level in range(LADDER_LEVELS)),
        ]  # fmt: skip

    def queues_of(self, queue: str) -> list[QueueSpec]:
        """What one OJS queue needs, declared on its first use (job queue last, so nothing
        is routed to it before its dead-letter queue exists)."""
        return [
            QueueSpec(self.dead_letter_queue(queue), "dead-letter",
                      self.dead_letter_queue_arguments(), self.dlx_exchange, queue),
            QueueSpec(self.control_queue(queue), "control", self.control_queue_arguments(),
                      self.direct_exchange, CONTROL_KEY_PREFIX + queue),
            QueueSpec(self.job_queue(queue), "job", self.job_queue_arguments(queue),
                      self.direct_exchange, queue),
        ]  # fmt: skip

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

    @staticmethod
    def control_queue_arguments() -> dict[str, Any]:
        """Classic: control traffic is small and short-lived, and every quorum queue costs the
        broker file handles; durable + persistent messages still survive a broker restart."""
        return {"x-queue-type": "classic"}

    @staticmethod
    def job_carrying_queue_arguments() -> dict[str, Any]:
        """Fixed queues that hold jobs on their way in (submissions, retry intake)."""
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
#: Routing key of a queue's control queue on ojs.exchange.direct (DQ-11: `control.` is a
#: reserved queue-name prefix, so it cannot collide with a job queue).
CONTROL_KEY_PREFIX = "control."
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
