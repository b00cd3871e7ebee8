"""The Python SDK: produce and work OJS jobs over AMQP only (docs/sdk.md).

async with Client(url, prefix="acme") as client:
    job = await client.push("email.send", ["ada@example.com"], queue="email")

worker = Worker(url, prefix="acme", queues=["email"])

@worker.handler("email.send")
async def send(ctx: JobContext) -> dict[str, bool]:
    return {"sent": True}

await worker.run()
"""

from ojs_amqp.sdk.client import Client
from ojs_amqp.sdk.context import JobContext
from ojs_amqp.sdk.errors import (
    BatchPushError,
    BrokerStalled,
    JobError,
    PublishRejected,
    ReplyTimeout,
    Unroutable,
)
from ojs_amqp.sdk.handlers import Handler
from ojs_amqp.sdk.worker import Worker, WorkerStats

__all__ = [
    "BatchPushError",
    "BrokerStalled",
    "Client",
    "Handler",
    "JobContext",
    "JobError",
    "PublishRejected",
    "ReplyTimeout",
    "Unroutable",
    "Worker",
    "WorkerStats",
]
