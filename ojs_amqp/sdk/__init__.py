"""The Python SDK: produce and work OJS jobs over AMQP only (docs/sdk.md).

async with Client(url, prefix="acme") as client:
    job = await client.push("email.send", ["ada@example.com"], queue="email")

worker = Worker(url, prefix="acme", queues=["email"])

@worker.handler("email.send")
async def send(ctx: JobContext) -> dict[str, bool]:
    return {"sent": True}

await worker.run()

`use_fast_frame_reader()` makes every aiormq connection of the process read frames with
ojs_amqp/amqp/frames.py's faster reader (`ojs-amqp worker` turns it on; importing the SDK
does not, since it would change the application's own aio-pika connections too).
"""

from ojs_amqp.amqp import _aiormq as _aiormq
from ojs_amqp.amqp import frames as _frames
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


def use_fast_frame_reader() -> bool:
    """Opt in to the faster frame reader for every aiormq connection of this process; False
    (aiormq's own reader kept, with a warning) when the installed aiormq lacks what it needs."""
    _aiormq.report_at_start()
    return _frames.install()


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
    "use_fast_frame_reader",
]
