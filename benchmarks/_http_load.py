"""bench_http.py's Python load generators for (c) and (d): push, and the fetch+ack worker loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from _common import BASE, post_json, run_window
from _raw_baseline import PHASE_TIMEOUT_S, payload

#: POST path, JSON body, expected status -> the answer's JSON (aiohttp or the lean client).
Post = Callable[[str, Any, int], Awaitable[Any]]


def aiohttp_poster(session: aiohttp.ClientSession, base: str) -> Post:
    async def post(path: str, body: Any, expect: int) -> Any:
        return await post_json(session, base + path, body, expect)

    return post


async def http_push(post: Post, queue: str, total: int, concurrency: int) -> float:
    url = f"{BASE}/jobs"

    async def push(i: int) -> None:
        body = {"type": "bench.noop", "args": [payload(i)], "options": {"queue": queue}}
        await post(url, body, 201)

    return await run_window(concurrency, total, push, timeout_s=PHASE_TIMEOUT_S)


async def http_drain(post: Post, queue: str, total: int, concurrency: int, count: int) -> float:
    """C workers fetch (`count` per call) and ack each job until `total` jobs are acked.

    The clock stops at the last ack; workers then still parked in an empty fetch (the daemon
    holds those up to its fetch wait) finish untimed.
    """
    fetch_url, ack_url = f"{BASE}/workers/fetch", f"{BASE}/workers/ack"
    fetch_body = {"queues": [queue], "count": count}
    acked = 0
    end = 0.0
    finished = asyncio.Event()

    async def worker() -> None:
        nonlocal acked, end
        while not finished.is_set():
            answer = await post(fetch_url, fetch_body, 200)
            for job in answer["jobs"]:
                await post(ack_url, {"job_id": job["id"]}, 200)
                acked += 1
                if acked >= total and not finished.is_set():
                    end = time.perf_counter()
                    finished.set()

    start = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return end - start
