"""What job priority gives native workers, per broker version (AMQP-030,
docs/amqp-binding.md): the daemon sets the AMQP `priority` property on every job copy (OJS
priority mapped to 0-9, so OJS 0 is 4 and OJS 10 is 8). Quorum queues ignore it on RabbitMQ
3.x (FIFO); on 4.0-4.2 they know two levels, AMQP priority 0-4 "normal" and 5 and above
"high", and hand out two high for each normal one while both wait; from 4.3 on, RabbitMQ
documents strict order over 32 levels (not yet run here). This test runs against the broker
the suite targets (OJS_TEST_AMQP_URL) and checks what that broker gives."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiormq
import pytest

from ojs_amqp.amqp.topology import Topology
from tests.daemon import Daemon, request

pytestmark = pytest.mark.integration

NORMAL, HIGH = 0, 10


def push(daemon: Daemon, queue: str, priority: int, label: str) -> str:
    body = {"type": "prio.job", "args": [label], "options": {"queue": queue, "priority": priority}}
    status, answer = request("POST", f"{daemon.url}/ojs/v1/jobs", body)
    assert status == 201, answer
    return str(answer["job"]["id"])


def broker_version(daemon: Daemon) -> tuple[int, int]:
    status, body = request("GET", f"{daemon.url}/ojs/v1/health")
    assert status == 200, body
    major, minor = body["backend"]["version"].split(".")[:2]
    return int(major), int(minor)


def native_order(amqp_url: str, queue_name: str, count: int) -> list[tuple[str, int | None]]:
    """What a native worker would receive, in order: (label, AMQP priority) per message."""

    async def take() -> list[tuple[str, int | None]]:
        connection = await aiormq.connect(amqp_url)
        try:
            channel = await connection.channel()
            got = []
            for _ in range(count):
                message = await channel.basic_get(queue_name, no_ack=True)
                body: Any = json.loads(message.body)
                got.append((str(body["args"][0]), message.header.properties.priority))
            return got
        finally:
            await connection.close()

    return asyncio.run(take())


def test_native_workers_get_the_order_the_broker_under_test_gives(daemon: Daemon) -> None:
    version = broker_version(daemon)
    queue = f"prio-{uuid.uuid4().hex[:6]}"
    labels = [f"n{i}" for i in range(6)] + [f"h{i}" for i in range(6)]
    for label in labels:  # all the normal ones first, then all the high ones
        push(daemon, queue, NORMAL if label[0] == "n" else HIGH, label)
    got = native_order(daemon.amqp_url, Topology(daemon.prefix).job_queue(queue), len(labels))
    assert {label: prio for label, prio in got} == {
        label: 4 if label[0] == "n" else 8 for label in labels
    }, "the AMQP priority property the daemon sets"
    order = [label for label, _ in got]
    print(f"\nRabbitMQ {'.'.join(map(str, version))}: native workers got {order}")
    if version[0] == 3:
        # RabbitMQ 3.x quorum queues have no priorities: first in, first out.
        assert order == labels, f"RabbitMQ {version}: expected FIFO"
    elif version[0] == 4 and version[1] <= 2:
        # RabbitMQ 4.0-4.2: two levels; high ones overtake, two for each normal one.
        expected = ["h0", "h1", "n0", "h2", "h3", "n1", "h4", "h5", "n2", "n3", "n4", "n5"]
        assert order == expected, f"RabbitMQ {version}: expected two levels at 2:1"
    elif version[0] == 4:
        # RabbitMQ 4.3 and later, by its documentation (no such node has run this yet):
        # strict priority order over 32 levels, FIFO within one.
        assert order == labels[6:] + labels[:6], f"RabbitMQ {version}: expected strict order"
    else:
        pytest.fail(f"no expectation recorded for RabbitMQ {version}: it gave {order}; "
                    "record it here and in docs/amqp-binding.md (AMQP-030)")  # fmt: skip


def test_http_workers_get_exact_priority_order_on_any_broker(daemon: Daemon) -> None:
    """The daemon's gateway orders what it buffers by OJS priority itself."""
    queue = f"prio-{uuid.uuid4().hex[:6]}"
    pushed = {push(daemon, queue, p, f"p{p}"): p for p in (0, -5, 3, 10, 1, 50)}
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/workers/fetch",
        {"queues": [queue], "worker_id": "w1", "count": 6},
    )  # fmt: skip
    assert status == 200, body
    assert [pushed[j["id"]] for j in body["jobs"]] == [50, 10, 3, 1, 0, -5]
