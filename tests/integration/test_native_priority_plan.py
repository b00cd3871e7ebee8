"""`core/priority.native_plan` against the broker under test (OJS_TEST_AMQP_URL): a queue
declared as the plan says hands native consumers the order the plan claims (strict by level,
or two weighted levels), and a queue of another kind cannot be turned into it in place,
which is why `declare_mismatch` is an error with a migration, never a redeclare."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiormq
import pytest
from pamqp.commands import Basic

from ojs_amqp.core.priority import (
    amqp_bucket,
    declare_mismatch,
    native_plan,
    parse_broker_version,
)
from tests.daemon import AMQP_URL

pytestmark = pytest.mark.integration

#: OJS priorities published lowest first, so any broker-side order shows.
PUBLISHED = [-10] * 4 + [0] * 4 + [10] * 4


async def _run(check: Any) -> Any:
    connection = await aiormq.connect(AMQP_URL)
    try:
        raw = connection.server_properties["version"]
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return await check(connection, parse_broker_version(text))
    finally:
        await connection.close()


def _declare_args(queue_type: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"x-queue-type": queue_type, **arguments}


def test_a_queue_declared_by_the_plan_orders_as_the_plan_says() -> None:
    async def check(connection: aiormq.abc.AbstractConnection, version: tuple[int, int]) -> Any:
        plan = native_plan(version)
        name = f"level4-plan-{uuid.uuid4().hex[:8]}"
        channel = await connection.channel()
        await channel.confirm_delivery()
        await channel.queue_declare(
            name, durable=True, arguments=_declare_args(plan.queue_type, plan.arguments)
        )
        try:
            for i, priority in enumerate(PUBLISHED):
                await channel.basic_publish(
                    f"{priority}:{i}".encode(),
                    routing_key=name,
                    properties=Basic.Properties(priority=amqp_bucket(priority), delivery_mode=2),
                )
            await asyncio.sleep(0.3)
            got = []
            for _ in PUBLISHED:
                message = await channel.basic_get(name, no_ack=True)
                got.append(int(message.body.decode().split(":")[0]))
            return plan, got
        finally:
            await channel.queue_delete(name)

    plan, got = asyncio.run(_run(check))
    levels = [plan.broker_level(p) for p in got]
    if plan.strict:
        assert levels == sorted(levels, reverse=True), got
        assert got == sorted(PUBLISHED, reverse=True)
    else:
        assert plan.levels == 2
        # Two levels, served two high for each normal one while both wait.
        assert levels[:6] == [1, 1, 0, 1, 1, 0], got
        assert sorted(got) == sorted(PUBLISHED)


def test_an_existing_queue_of_another_kind_cannot_be_converted_in_place() -> None:
    async def check(connection: aiormq.abc.AbstractConnection, version: tuple[int, int]) -> Any:
        plan = native_plan(version)
        other = "quorum" if plan.queue_type == "classic" else "classic"
        name = f"level4-plan-{uuid.uuid4().hex[:8]}"
        channel = await connection.channel()
        await channel.queue_declare(name, durable=True, arguments={"x-queue-type": other})
        try:
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
                await channel.queue_declare(
                    name, durable=True, arguments=_declare_args(plan.queue_type, plan.arguments)
                )
        finally:
            cleanup = await connection.channel()
            await cleanup.queue_delete(name)
        return plan, other, name

    plan, other, name = asyncio.run(_run(check))
    message = declare_mismatch(plan, name, other, None)
    assert message is not None and "cannot convert" in message
