"""Cron: schedules stored in the job store, fired by exactly one daemon.

Leadership comes from the broker: every daemon consumes one single-active-consumer queue and
publishes a token to it each second; RabbitMQ delivers all tokens to one consumer only, so the
daemon that received a token lately is the leader. When it dies, the broker promotes the next
consumer, which starts receiving tokens. Even so, a tick is made idempotent: its job id is
derived from (cron name, tick time), and the stored next run moves by compare-and-set, so a
tick fired twice (failover, or a crash between the two steps) is still one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from ojs_amqp.core.cron import parse_schedule
from ojs_amqp.core.ids import derived_uuidv7
from ojs_amqp.core.job import JobState
from ojs_amqp.core.times import format_ms
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.engine.kinds import EventType
from ojs_amqp.engine.ports import CronRecords, Delivery, JobTransport
from ojs_amqp.errors import Duplicate, InvalidRequest, NotFound, OjsError

log = logging.getLogger("ojs_amqp.cron")

OVERLAP_POLICIES = ("skip", "allow", "cancel_previous")
LEADER_TOKEN_EVERY_S = 1.0
LEADER_TOKEN_FRESH_S = 3.0


def cron_to_wire(cron: dict[str, Any]) -> dict[str, Any]:
    """A schedule in both of the spec's shapes: the OpenAPI document's (`expression`,
    `job_template`, `enabled`) and the HTTP binding's §13 (`cron`, `type`, `args`, `meta`,
    `options`, `status`), so that SDKs reading either find their fields."""
    out = {k: v for k, v in cron.items() if not k.endswith("_ms")}
    for key in ("created_at", "next_run_at", "last_run_at"):
        value = cron.get(key + "_ms")
        out[key] = format_ms(value) if value is not None else None
    template = cron.get("job_template") or {}
    out["cron"] = cron.get("expression")
    for key in ("type", "args", "meta", "options"):
        if key in template:
            out[key] = template[key]
    out["status"] = "active" if cron.get("enabled", True) else "paused"
    return out


class CronScheduler:
    def __init__(
        self,
        engine: JobEngine,
        store: CronRecords,
        transport: JobTransport,
        *,
        clock: Callable[[], int],
    ) -> None:
        self.engine = engine
        self.store = store
        self._transport = transport
        self._now = clock
        self._daemon_id = uuid.uuid4().hex
        self._last_token = float("-inf")
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._consume_tokens()
        self.engine.on_reset.append(self._consume_tokens)
        self._tasks = [
            asyncio.create_task(
                self._loop(self._send_token, LEADER_TOKEN_EVERY_S), name="cron-token"
            ),
            asyncio.create_task(self._loop(self.tick, 1.0), name="cron-tick"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self, work: Callable[[], Any], every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s - (time.time() % every_s) + 0.005)
            try:
                await work()
            except OjsError as exc:
                log.warning("cron: %s", exc.message)
            except Exception:
                log.exception("cron step failed")

    # --- leadership ------------------------------------------------------------------------

    async def _consume_tokens(self) -> None:
        await self._transport.consume_leader_tokens(self._on_token)

    async def _on_token(self, token: Delivery) -> None:
        self._last_token = time.monotonic()
        with contextlib.suppress(Exception):
            token.handle.ack()

    async def _send_token(self) -> None:
        if not self._transport.connected:
            return
        await self._transport.send_leader_token(self._daemon_id)

    @property
    def is_leader(self) -> bool:
        return time.monotonic() - self._last_token < LEADER_TOKEN_FRESH_S

    # --- registration ----------------------------------------------------------------------

    async def register(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create or replace a schedule; returns (cron, created)."""
        now = self._now()
        cron = _parse_registration(body)
        schedule = parse_schedule(cron["expression"], cron["timezone"])
        # Dry-run the template through the envelope parser: a bad template fails now, not
        # silently at every tick.
        await self.engine.validate_job(cron["job_template"])
        existing = await self.store.get_cron(cron["name"])
        cron["created_at_ms"] = existing["created_at_ms"] if existing else now
        cron["next_run_at_ms"] = schedule.next_after(now, cron["created_at_ms"])
        cron["last_run_at_ms"] = existing.get("last_run_at_ms") if existing else None
        cron["run_count"] = existing.get("run_count", 0) if existing else 0
        cron["last_job_id"] = existing.get("last_job_id") if existing else None
        await self.store.put_cron(cron)
        return cron, existing is None

    async def get(self, name: str) -> dict[str, Any]:
        cron = await self.store.get_cron(name)
        if cron is None:
            raise NotFound(f"no cron named {name!r}", details={"resource_type": "cron",
                                                                "resource_id": name})  # fmt: skip
        return cron

    async def delete(self, name: str) -> dict[str, Any]:
        cron = await self.get(name)
        await self.store.delete_cron(name)
        return cron

    async def list(self) -> list[dict[str, Any]]:
        return await self.store.crons()

    # --- firing ----------------------------------------------------------------------------

    async def tick(self) -> None:
        if not self.is_leader:
            return
        now = self._now()
        for cron in await self.store.due_crons(now):
            await self._fire(cron, now)

    async def _fire(self, cron: dict[str, Any], now: int) -> None:
        tick = cron["next_run_at_ms"]
        schedule = parse_schedule(cron["expression"], cron["timezone"])
        template = cron["job_template"]
        queue = (template.get("options") or {}).get("queue") or "default"
        job_type = str(template.get("type"))
        updated = dict(cron)
        # One catch-up run at most: after an outage the next run is the first one after now.
        updated["next_run_at_ms"] = schedule.next_after(max(now, tick), cron["created_at_ms"])
        if cron.get("enabled", True):
            if await self._overlaps(cron):
                self.engine.events.emit_cron(EventType.CRON_SKIPPED, cron["name"], queue,
                                             job_type, now, scheduled_for=format_ms(tick),
                                             previous_job_id=cron.get("last_job_id"))  # fmt: skip
            else:
                job_id = await self._enqueue(cron, tick)
                updated.update(last_run_at_ms=now, run_count=cron.get("run_count", 0) + 1,
                               last_job_id=job_id)  # fmt: skip
                self.engine.events.emit_cron(EventType.CRON_TRIGGERED, cron["name"], queue,
                                             job_type, now, job_id=job_id,
                                             scheduled_for=format_ms(tick))  # fmt: skip
        await self.store.put_cron(updated, expect_next_run_ms=tick)

    async def _overlaps(self, cron: dict[str, Any]) -> bool:
        previous = cron.get("last_job_id")
        policy = cron.get("overlap_policy", "skip")
        if previous is None or policy == "allow":
            return False
        job = await self.store.get(previous)
        if job is None or job.state.terminal:
            return False
        if policy == "cancel_previous":
            with contextlib.suppress(OjsError):
                await self.engine.cancel(previous)
            return False
        return job.state in (JobState.AVAILABLE, JobState.ACTIVE, JobState.RETRYABLE,
                             JobState.SCHEDULED, JobState.PENDING)  # fmt: skip

    async def _enqueue(self, cron: dict[str, Any], tick: int) -> str:
        template = cron["job_template"]
        job_id = derived_uuidv7(tick, f"{cron['name']}@{tick}")
        meta = {**(template.get("meta") or {}), "cron_name": cron["name"],
                "cron_triggered_at": format_ms(tick)}  # fmt: skip
        body = {**template, "id": job_id, "meta": meta}
        with contextlib.suppress(Duplicate):  # already fired (another daemon, or pre-crash)
            await self.engine.push(body)
        return job_id


def _parse_registration(body: dict[str, Any]) -> dict[str, Any]:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name.encode()) > 255:
        raise InvalidRequest("name must be a non-empty string of at most 255 bytes",
                             details={"field": "name"})  # fmt: skip
    expression = body.get("expression", body.get("cron"))
    if not isinstance(expression, str):
        raise InvalidRequest("expression must be a cron expression string",
                             details={"field": "expression"})  # fmt: skip
    timezone = body.get("timezone", "UTC")
    if not isinstance(timezone, str):
        raise InvalidRequest("timezone must be an IANA zone name", details={"field": "timezone"})
    overlap = body.get("overlap_policy", "skip")
    if overlap not in OVERLAP_POLICIES:
        raise InvalidRequest(f"overlap_policy must be one of {', '.join(OVERLAP_POLICIES)}",
                             details={"field": "overlap_policy"})  # fmt: skip
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidRequest("enabled must be a boolean", details={"field": "enabled"})
    template = body.get("job_template")
    if template is None and "type" in body:
        template = {k: body[k] for k in ("type", "args", "meta", "options") if k in body}
        template.setdefault("args", [])
    if not isinstance(template, dict):
        raise InvalidRequest("job_template must be an object with type, args and options",
                             details={"field": "job_template"})  # fmt: skip
    description = body.get("description")
    return {
        "name": name,
        "expression": expression,
        "timezone": timezone,
        "overlap_policy": overlap,
        "enabled": enabled,
        "description": description if isinstance(description, str) else None,
        "job_template": template,
    }
