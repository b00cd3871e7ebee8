"""Handlers the CLI worker tests load with `ojs-amqp worker tests.integration.sdk_handlers:...`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from ojs_amqp.sdk import JobContext, Worker

worker = Worker(queues=["cli"], heartbeat_interval=0.5)


@worker.handler("sdk.slow")
async def slow(ctx: JobContext) -> dict[str, Any]:
    """args: [marker file, seconds]: touch the marker when started, then sleep."""
    await asyncio.to_thread(Path(ctx.args[0]).touch)
    await asyncio.sleep(ctx.args[1])
    return {"slept": ctx.args[1]}


def slow_in_thread(ctx: JobContext) -> dict[str, Any]:
    Path(ctx.args[0]).touch()
    time.sleep(ctx.args[1])
    return {"slept": ctx.args[1]}


#: The dict form of a target.
handlers = {"sdk.slow": slow, "sdk.slow-thread": slow_in_thread}
