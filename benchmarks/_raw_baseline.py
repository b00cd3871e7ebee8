"""bench_http.py's baselines (a) and (b): a bare aio-pika client on the same quorum queue type."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
import orjson
from _common import BenchError, run_window

RAW_PREFETCH = 256
PHASE_TIMEOUT_S = 300.0


def payload(i: int) -> dict[str, Any]:
    """The job arguments: with the envelope around them, about 300 bytes of JSON."""
    return {"n": i, "customer": f"cust-{i % 997:04d}", "action": "bench.noop", "note": "x" * 180}


def raw_body(i: int, queue: str) -> bytes:
    return orjson.dumps({"type": "bench.noop", "queue": queue, "args": [payload(i)]})


# --- (a) and (b): raw aio-pika baselines ---------------------------------------------------


@dataclass
class RawNames:
    exchange: str
    queue: str


async def raw_declare(conn: aio_pika.abc.AbstractConnection, names: RawNames) -> None:
    channel = await conn.channel(publisher_confirms=False)
    exchange = await channel.declare_exchange(
        names.exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    queue = await channel.declare_queue(
        names.queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.bind(exchange, "bench")
    await channel.close()


async def raw_publish(
    conn: aio_pika.abc.AbstractConnection,
    names: RawNames,
    total: int,
    concurrency: int,
    offset: int = 0,
) -> float:
    """Confirmed, mandatory, persistent publishes, `concurrency` in flight on one channel."""
    channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(names.exchange, ensure=False)

    async def publish(i: int) -> None:
        message = aio_pika.Message(
            body=raw_body(offset + i, names.queue),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(offset + i),
        )
        confirmation = await exchange.publish(message, "bench", mandatory=True, timeout=10.0)
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise BenchError(f"publish not confirmed: {confirmation!r}")

    seconds = await run_window(concurrency, total, publish, timeout_s=PHASE_TIMEOUT_S)
    await channel.close()
    return seconds


async def raw_consume(
    conn: aio_pika.abc.AbstractConnection, names: RawNames, warmup: int, total: int
) -> float:
    """Consume warmup + total messages with a manual ack each; time the last `total`."""
    channel = await conn.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=RAW_PREFETCH)
    queue = await channel.get_queue(names.queue, ensure=False)
    seen = 0
    start = time.perf_counter()
    end = start
    done = asyncio.Event()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal seen, start, end
        await message.ack()
        seen += 1
        if seen == warmup:
            start = time.perf_counter()
        elif seen == warmup + total:
            end = time.perf_counter()
            done.set()

    tag = await queue.consume(on_message, no_ack=False)
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        await done.wait()
    await queue.cancel(tag)
    await channel.close()
    return end - start
