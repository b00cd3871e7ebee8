"""Job priority: numeric or named, one ordering, and what the broker can offer natively.

OJS priority is an integer, higher first, FIFO among equals, at least -100..100 (ojs-core);
the named levels are the core's HIGH = 10, NORMAL = 0, LOW = -10, which the suite uses too.
ojs-conformance.md's 3/2/1 and ojs-priority.md's lower-wins 0..255 scale (with its
Critical/Bulk names) contradict the core; names from them are refused rather than given a
number the spec does not agree on.

HTTP workers get the exact order from the gateway's buffer (`order_key`). Native workers
read the broker's queue, so they only see what its priority support can express:
`native_plan` says what to declare and how OJS priorities fold into AMQP's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ojs_amqp.errors import InvalidRequest

PRIORITY_RANGE = (-100, 100)
NAMED = {"HIGH": 10, "NORMAL": 0, "LOW": -10}


def parse_priority(value: Any, field_name: str = "priority") -> int:
    """An OJS priority from the wire: an integer in PRIORITY_RANGE or a level name
    (case-insensitive). Anything else is 400 invalid_request, like today's range check."""
    if isinstance(value, bool):
        raise _bad(
            field_name, f"{field_name} must be an integer or one of {_names()}, not a boolean"
        )
    if isinstance(value, int):
        low, high = PRIORITY_RANGE
        if not low <= value <= high:
            raise _bad(field_name, f"{field_name} {value} is out of range [{low}, {high}]")
        return value
    if isinstance(value, str):
        named = NAMED.get(value.strip().upper())
        if named is None:
            raise _bad(
                field_name,
                f"{field_name} {value!r} is not a level name; use {_names()} or an integer "
                f"in [{PRIORITY_RANGE[0]}, {PRIORITY_RANGE[1]}] (higher runs first)",
            )
        return named
    raise _bad(field_name, f"{field_name} must be an integer or one of {_names()}")


def _names() -> str:
    return ", ".join(f"{name} ({number})" for name, number in NAMED.items())


def _bad(field_name: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, details={"field": field_name})


def order_key(priority: int, place: int) -> tuple[int, int]:
    """Sort key of the hand-out order: higher priority first, then arrival (`place`)."""
    return (-priority, place)


# --- native workers: what the broker offers ------------------------------------------------

#: Upper bounds of the ten AMQP buckets (0..9) for OJS priorities, chosen so that the core's
#: 10/0/-10 and conformance.md's 3/2/1 all land in different buckets.
_TEN_BANDS = ((-50, 0), (-11, 1), (-2, 2), (-1, 3), (0, 4), (1, 5), (2, 6), (9, 7), (49, 8))


def amqp_bucket(priority: int) -> int:
    """OJS priority to the AMQP 0..9 message priority (what every publish carries)."""
    for upper, bucket in _TEN_BANDS:
        if priority <= upper:
            return bucket
    return 9


@dataclass(frozen=True, slots=True)
class NativePriority:
    """How an opted-in queue is declared so native consumers get broker-side priority."""

    queue_type: str  # "classic" or "quorum"
    arguments: dict[str, Any] = field(default_factory=dict)
    #: Distinct priorities the broker tells apart.
    levels: int = 10
    #: Whether a higher level is always delivered first (False: weighted, e.g. 2:1).
    strict: bool = True
    note: str = ""

    def broker_level(self, priority: int) -> int:
        """The level an OJS priority lands in on this queue (0 = lowest)."""
        bucket = amqp_bucket(priority)
        if self.levels == 2:
            return 1 if bucket > 4 else 0
        return bucket


def parse_broker_version(text: str) -> tuple[int, int]:
    """(major, minor) of RabbitMQ's `server_properties.version` ("3.10.7", "4.0.5")."""
    parts = text.strip().split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ValueError(f"not a RabbitMQ version: {text!r}") from None


def native_plan(version: tuple[int, int]) -> NativePriority:
    """What a queue opted in to native priority is declared as, by broker version.

    - 3.x: quorum queues have no priorities, so the queue is classic with
      `x-max-priority: 9` (the ten buckets every publish already carries). It gives up
      replication: the price of the opt-in, stated in docs.
    - 4.0 to 4.2: quorum queues have two priorities, no argument needed: AMQP priority 5+
      (OJS priority > 0) is "high", delivered ahead of normal in a weighted ratio, not
      strictly. The queue stays quorum.
    - 4.3 and later: quorum queues honour `x-max-priority` strictly; we keep the same ten
      buckets (research note §B.3; no 4.3 broker was available to check it here).
    """
    major, minor = version
    if major < 4:
        return NativePriority(
            "classic", {"x-max-priority": 9}, levels=10, strict=True,
            note="classic queue: not replicated; dead-lettering without publisher confirms",
        )  # fmt: skip
    if (major, minor) < (4, 3):
        return NativePriority(
            "quorum", {}, levels=2, strict=False,
            note="two levels: OJS priority > 0 is high, served ahead of the rest 2:1",
        )  # fmt: skip
    return NativePriority("quorum", {"x-max-priority": 9}, levels=10, strict=True)


def declare_mismatch(
    plan: NativePriority, queue: str, existing_type: str, existing_max_priority: int | None
) -> str | None:
    """Why an existing queue cannot serve as `plan` asks, or None. RabbitMQ cannot change a
    queue's type or `x-max-priority` in place (a redeclare fails with PRECONDITION_FAILED),
    so the answer is an operator's migration, never a silent delete and redeclare."""
    wanted = plan.arguments.get("x-max-priority")
    if existing_type == plan.queue_type and existing_max_priority == wanted:
        return None
    have = f"{existing_type}" + (
        f" with x-max-priority {existing_max_priority}" if existing_max_priority else ""
    )
    want = f"{plan.queue_type}" + (f" with x-max-priority {wanted}" if wanted else "")
    return (
        f"queue {queue!r} exists as a {have} queue, but native priority needs a {want} "
        "queue; RabbitMQ cannot convert a queue in place. Migrate: stop producers for the "
        "queue, let its workers drain it (or move its messages with a shovel), delete it "
        "(`ojs-amqp queues delete`), then start the daemon with the queue opted in, which "
        "declares it anew (docs/adr/0010-level-4.md, 'Priority')."
    )
