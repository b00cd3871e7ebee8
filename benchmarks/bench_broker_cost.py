#!/usr/bin/env python
"""What OJS queues cost the broker: file descriptors, file-handle accounting and memory.

For each RabbitMQ series asked for (3.10 and 4.0 by default) the script starts a private node
(tests/rabbit_node.py: the host's 3.10, or 4.0.5 from the Debian trixie root), then measures
the node's Erlang VM:

1. just started;
2. after one daemon's fixed topology (exchanges, delay ladder, submit/retry/control queues);
3. after N OJS queues, each declared as the daemon declares it (Topology.queues_of: a
   dead-letter queue, a control queue and a job queue);
4. after M persistent messages published into each job queue.

Figures: broker queues (and how many are quorum queues), open file descriptors of beam.smp
(/proc/PID/fd), file_handle_cache's `total_used` / `total_limit` (RabbitMQ 3.10 stops
accepting connections when used reaches the limit), VmRSS and erlang:memory(total).
The node is stopped and its files removed at the end. docs/operations.md quotes a run.

    python benchmarks/bench_broker_cost.py [--queues 100] [--messages 10] [--broker 4.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ojs_amqp.amqp.topology import QueueSpec, Topology
from tests.rabbit_node import BROKERS, RabbitNode, new_node

SETTLE_S = 5.0


def _vm(node: RabbitNode) -> dict[str, Any]:
    pid = node._node_pid()
    assert pid is not None
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss_kb = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    fhc = node.ctl("eval", "file_handle_cache:info([total_used, total_limit]).").strip()
    used, limit = (int(part.split(",")[1].strip(" }]")) for part in fhc.split("},"))
    memory = int(node.ctl("eval", "erlang:memory(total).").strip())
    queues = [
        line.split("\t")
        for line in node.ctl("list_queues", "name", "type", "--no-table-headers").splitlines()
        if line.strip()
    ]
    return {
        "queues": len(queues),
        "quorum": sum(1 for q in queues if q[1].strip() == "quorum"),
        "fds": fds,
        "fhc_used": used,
        "fhc_limit": limit,
        "rss_mib": round(rss_kb / 1024, 1),
        "erlang_mib": round(memory / 2**20, 1),
    }


async def _declare(url: str, topology: Topology, specs: list[QueueSpec]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for exchange in topology.exchanges():
            await channel.declare_exchange(exchange.name, exchange.type, durable=True)
        for spec in specs:
            queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
            if spec.exchange:
                await queue.bind(spec.exchange, spec.routing_key)


async def _publish(url: str, names: list[str], messages: int) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in names:
            for i in range(messages):
                body = json.dumps({"id": f"{name}-{i}", "type": "bench", "args": []}).encode()
                await channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), name
                )


def measure(broker: str, queues: int, messages: int) -> list[dict[str, Any]]:
    node = new_node(broker)
    node.start()
    rows: list[dict[str, Any]] = []

    def row(step: str) -> None:
        time.sleep(SETTLE_S)
        rows.append({"broker": broker, "step": step, **_vm(node)})
        print(json.dumps(rows[-1]), flush=True)

    try:
        version = node.ctl("eval", "rabbit_misc:version().").strip().strip('"')
        print(f"RabbitMQ {version}, private node {node.name}", flush=True)
        topology = Topology("cost")
        row("started")
        asyncio.run(_declare(node.amqp_url, topology, topology.fixed_queues()))
        row("fixed topology")
        names = [f"q{i:04d}" for i in range(queues)]
        specs = [spec for name in names for spec in topology.queues_of(name)]
        asyncio.run(_declare(node.amqp_url, topology, specs))
        row(f"+{queues} OJS queues")
        asyncio.run(_publish(node.amqp_url, [topology.job_queue(n) for n in names], messages))
        row(f"+{messages} messages each")
    finally:
        node.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queues", type=int, default=100)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--broker", action="append", choices=BROKERS)
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args()
    rows = [r for b in args.broker or BROKERS for r in measure(b, args.queues, args.messages)]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
