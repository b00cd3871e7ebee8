"""The first use of a queue: tell the daemon (hello), then declare the queue trio.

Both, in that order:
- hello alone races: the daemon declares the queue when it reads the hello, so a PUSH sent
  right after it could still be unroutable;
- declaring alone works for RabbitMQ but the daemon would never watch the queue's
  dead-letter and control queues (discards and reports would pile up unread);
- hello first, mandatory and confirmed, also catches a wrong `--prefix` or a daemon that
  never ran (`ojs.control` missing) before anything is created under the wrong names.
The declarations come from the daemon's own list (`Topology.queues_of`), so they are
idempotent re-declarations, never a 406.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import aiormq
from aiormq.abc import AbstractChannel, AbstractConnection

from ojs_amqp.amqp import protocol
from ojs_amqp.amqp.failures import PUBLISH_ERRORS, through_declare_races
from ojs_amqp.amqp.pipe import Pipe
from ojs_amqp.amqp.topology import QueueSpec, Topology
from ojs_amqp.core.envelope import validate_queue
from ojs_amqp.errors import BackendUnavailable, TopologyMismatch
from ojs_amqp.sdk import control
from ojs_amqp.sdk.errors import Unroutable


async def send_hello(
    pipe: Pipe, topology: Topology, queues: Iterable[str], worker_id: str | None
) -> None:
    names = list(queues)
    try:
        await pipe.publish(
            control.hello(names, worker_id),
            exchange="",
            routing_key=topology.global_control_queue,
            properties=control.properties(protocol.HELLO),
        )
    except Unroutable:
        raise Unroutable(
            f"queue {topology.global_control_queue!r} does not exist: no ojs-amqp daemon has "
            f"run with prefix {topology.prefix!r} on this broker (check --prefix)",
            details={"queue": topology.global_control_queue},
        ) from None


async def declare_queues(
    connection: AbstractConnection, topology: Topology, queues: Iterable[str]
) -> None:
    """Declare ojs.queue.{q}, ojs.queue.dlx.{q} and ojs.queue.control.{q} with their bindings,
    exactly as the daemon does. A channel of its own: a 406 closes the channel."""
    channel: AbstractChannel | None = None

    async def reopen(_delay: float) -> None:  # the error closed the channel
        nonlocal channel
        channel = await connection.channel(publisher_confirms=False)

    try:
        await reopen(0.0)
        for q in queues:
            for spec in topology.queues_of(q):  # the daemon's own list, job queue last

                async def declare(spec: QueueSpec = spec) -> None:
                    assert channel is not None
                    await channel.queue_declare(spec.name, durable=True, arguments=spec.arguments)

                await through_declare_races(declare, reopen)
                assert channel is not None
                if spec.exchange:
                    await channel.queue_bind(spec.name, spec.exchange, routing_key=spec.routing_key)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise TopologyMismatch(
            f"a queue exists with other arguments than the daemon's ({exc}); it is never "
            "redeclared: delete it or align the configuration"
        ) from None
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise BackendUnavailable(
            f"an exchange is missing ({exc}); is a daemon running with prefix {topology.prefix!r}?"
        ) from None
    except PUBLISH_ERRORS as exc:
        raise BackendUnavailable(f"declaring the queues failed: {exc!r}") from None
    finally:
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*PUBLISH_ERRORS):  # aiormq's errors end here
                await channel.close()


async def announce(
    pipe: Pipe, topology: Topology, queues: Iterable[str], *, worker_id: str | None = None
) -> None:
    """Validate the names, send hello (confirmed, through the channel's pipe: nothing else
    may publish on it), then declare the trios."""
    names = list(dict.fromkeys(queues))
    for name in names:
        validate_queue(name)
    await send_hello(pipe, topology, names, worker_id)
    await declare_queues(pipe.channel.connection, topology, names)
