"""Handlers for the vanished-worker tests (`ojs-amqp worker ...lost_handlers:worker`).

`lost.hang` appends one line to the file named by its first argument each time it starts, then
sleeps far longer than any test: the test kills the worker process while it holds the job.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ojs_amqp.sdk import JobContext, Worker

worker = Worker(queues=["lost"], heartbeat_interval=0.5)


@worker.handler("lost.hang")
async def hang(ctx: JobContext) -> None:
    await asyncio.to_thread(_append, Path(ctx.args[0]), f"{ctx.attempt}\n")
    await asyncio.sleep(3600)


def _append(path: Path, line: str) -> None:
    with path.open("a") as runs:
        runs.write(line)


@worker.handler("lost.ok")
async def ok(ctx: JobContext) -> dict[str, int]:
    return {"attempt": ctx.attempt}
