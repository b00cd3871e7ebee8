"""`ojs-amqp topology`: every RabbitMQ name and x-argument the daemon uses, and declaring them.

The listing mirrors what `Broker` declares (its fixed topology at start, then a job queue and
its dead-letter and control queues on first use of a queue), computed from `Topology` alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ojs_amqp.admin.format import table
from ojs_amqp.amqp.broker import Broker
from ojs_amqp.amqp.topology import QueueSpec, Topology

#: Shown in place of a queue name when no --queue is given.
QUEUE_PLACEHOLDER = "{queue}"


def _queue(spec: QueueSpec) -> dict[str, Any]:
    bindings = [{"exchange": spec.exchange, "routing_key": spec.routing_key}]
    return {
        "name": spec.name,
        "kind": spec.kind,
        "durable": True,
        "arguments": spec.arguments,
        "bindings": bindings if spec.exchange else [],
    }


def describe(topology: Topology, queues: Sequence[str] = ()) -> dict[str, Any]:
    """Exchanges, then queues in the order the daemon declares them. Without `queues`, the
    per-queue entries are templates for a queue named `{queue}` (`"template": true`)."""
    exchanges = [
        {"name": e.name, "type": e.type, "durable": True, "purpose": e.purpose}
        for e in topology.exchanges()
    ]
    declared = [_queue(spec) for spec in topology.fixed_queues()]
    template = not queues
    for queue in queues or [QUEUE_PLACEHOLDER]:
        for spec in topology.queues_of(queue):
            entry = _queue(spec)
            entry["ojs_queue"] = queue
            if template:
                entry["template"] = True
            declared.append(entry)
    return {"prefix": topology.prefix or None, "exchanges": exchanges, "queues": declared}


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
        bound = bound or "(default exchange)"
        rows.append([q["name"], q["kind"], bound, _arguments(q["arguments"])])
    queues = table(["QUEUE", "KIND", "BOUND TO [ROUTING KEY]", "ARGUMENTS"], rows)
    text = f"{exchanges}\n\n{queues}"
    if any(q.get("template") for q in description["queues"]):
        text += (
            f"\n\n{QUEUE_PLACEHOLDER} stands for each OJS queue; the daemon declares those three "
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
