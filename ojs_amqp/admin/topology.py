"""`ojs-amqp topology`: every RabbitMQ name and x-argument the daemon uses, and declaring them.

The listing mirrors what `Broker` declares (its fixed topology at start, then a job queue and
its dead-letter queue on first use of a queue), computed from `Topology` alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ojs_amqp.admin.format import table
from ojs_amqp.amqp.broker import Broker
from ojs_amqp.amqp.topology import (
    DUE_ROUTING_KEY,
    LADDER_LEVELS,
    LEADER_ROUTING_KEY,
    Topology,
    ladder_routing_key,
)

#: Shown in place of a queue name when no --queue is given.
QUEUE_PLACEHOLDER = "{queue}"


def _queue(
    name: str, kind: str, arguments: dict[str, Any], exchange: str, routing_key: str
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "durable": True,
        "arguments": arguments,
        "bindings": [{"exchange": exchange, "routing_key": routing_key}],
    }


def describe(topology: Topology, queues: Sequence[str] = ()) -> dict[str, Any]:
    """Exchanges, then queues in the order the daemon declares them. Without `queues`, the
    per-queue entries are templates for a queue named `{queue}` (`"template": true`)."""
    t = topology
    job_queue, dead_letter_queue = t.job_queue("{queue}"), t.dead_letter_queue("{queue}")
    exchanges = [
        {"name": t.direct_exchange, "type": "direct", "durable": True,
         "purpose": f"jobs, routed to {job_queue} by queue name"},
        {"name": t.dlx_exchange, "type": "direct", "durable": True,
         "purpose": f"dead letters of job queues, routed to {dead_letter_queue}"},
        {"name": t.delay_exchange, "type": "direct", "durable": True,
         "purpose": "delay ladder, due queue and cron leadership tokens"},
        {"name": t.events_exchange, "type": "topic", "durable": True,
         "purpose": "OJS events, routing key {event type}.{queue} (serve --events-exchange)"},
    ]  # fmt: skip
    declared = [
        _queue(t.due_queue, "due", t.due_queue_arguments(), t.delay_exchange, DUE_ROUTING_KEY),
        _queue(t.leader_queue, "cron-leader", t.leader_queue_arguments(), t.delay_exchange,
               LEADER_ROUTING_KEY),
        *(_queue(t.ladder_queue(level), "delay-ladder", t.ladder_queue_arguments(level),
                 t.delay_exchange, ladder_routing_key(level)) for level in range(LADDER_LEVELS)),
    ]  # fmt: skip
    template = not queues
    for queue in queues or [QUEUE_PLACEHOLDER]:
        per_queue = [
            _queue(t.dead_letter_queue(queue), "dead-letter", t.dead_letter_queue_arguments(),
                   t.dlx_exchange, queue),
            _queue(t.job_queue(queue), "job", t.job_queue_arguments(queue), t.direct_exchange,
                   queue),
        ]  # fmt: skip
        for entry in per_queue:
            entry["ojs_queue"] = queue
            if template:
                entry["template"] = True
        declared += per_queue
    return {"prefix": t.prefix or None, "exchanges": exchanges, "queues": declared}


def _arguments(arguments: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in arguments.items()
    )


def render(description: dict[str, Any]) -> str:
    exchanges = table(
        ["EXCHANGE", "TYPE", "PURPOSE"],
        [[e["name"], e["type"], e["purpose"]] for e in description["exchanges"]],
    )
    rows = []
    for q in description["queues"]:
        bound = ", ".join(f"{b['exchange']} [{b['routing_key']}]" for b in q["bindings"])
        rows.append([q["name"], q["kind"], bound, _arguments(q["arguments"])])
    queues = table(["QUEUE", "KIND", "BOUND TO [ROUTING KEY]", "ARGUMENTS"], rows)
    text = f"{exchanges}\n\n{queues}"
    if any(q.get("template") for q in description["queues"]):
        text += (
            f"\n\n{QUEUE_PLACEHOLDER} stands for each OJS queue; the daemon declares those two "
            "queues on first use (or name queues with --queue)."
        )
    return text


async def declare(url: str, topology: Topology, queues: Sequence[str], attempts: int) -> None:
    """Declare the fixed topology and each queue's pair on the broker, as the daemon would."""
    broker = Broker(url, topology, connection_name="ojs-amqp-admin")
    await broker.start(attempts=attempts)
    try:
        for queue in queues:
            await broker.ensure_job_queue(queue)
    finally:
        await broker.close()


def run_declare(url: str, topology: Topology, queues: Sequence[str], attempts: int) -> None:
    asyncio.run(declare(url, topology, queues, attempts))
