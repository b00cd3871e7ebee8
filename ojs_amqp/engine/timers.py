"""Timers: what comes out of the due queue (scheduled jobs, retry backoffs, lease timers).

A timer message rides the delay ladder until it is close to due, then is held unacked here
and fired at its millisecond: the job moves on by the one move rule. A lease timer (an
active job's copy) is the leases' business.
"""

from __future__ import annotations

import logging

from ojs_amqp.core import lifecycle
from ojs_amqp.core.job import Job, JobState
from ojs_amqp.engine.leases import Leases
from ojs_amqp.engine.maintenance import Maintenance
from ojs_amqp.engine.moves import Mover
from ojs_amqp.engine.outcomes import Outcomes
from ojs_amqp.engine.ports import Delivery, JobRecords, JobTransport, Scheduler, TimerHandle
from ojs_amqp.engine.tasks import Tasks
from ojs_amqp.errors import OjsError

log = logging.getLogger("ojs_amqp.engine")

#: How soon a due timer that could not be published (broker away, queue full) is tried again.
TIMER_RETRY_MS = 1000


class Timers:
    def __init__(
        self,
        transport: JobTransport,
        store: JobRecords,
        scheduler: Scheduler,
        mover: Mover,
        leases: Leases,
        maintenance: Maintenance,
        outcomes: Outcomes,
        tasks: Tasks,
    ) -> None:
        self._transport = transport
        self._store = store
        self._scheduler = scheduler
        self._mover = mover
        self._leases = leases
        self._maintenance = maintenance
        self._outcomes = outcomes
        self._tasks = tasks
        #: Timer messages held unacked until due, by the delivery's identity.
        self._held: dict[int, TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._held)

    async def start(self) -> None:
        await self._transport.consume_due(self.on_due)

    async def on_due(self, delivery: Delivery) -> None:
        if self._mover.wait_for_record(delivery, self.on_due(delivery)):
            return
        now = self._scheduler.now_ms()
        due_at = delivery.due_at_ms if delivery.due_at_ms is not None else now
        if self._transport.rides_ladder(due_at - now) or delivery.returns > 0:
            # Came back early from a long level: ride the next one down. Or returned by the
            # broker (a lost connection, a restart): published afresh, so returns never add
            # up to the due queue's delivery limit (past it, a quorum queue with no
            # dead-letter exchange drops the message, and with it the job's timer).
            await self._transport.repark(delivery, due_at - now)
            self._mover.settle(delivery)
            return
        self._hold(delivery, due_at - now)

    def _hold(self, delivery: Delivery, delay_ms: int) -> None:
        """Keep a due message unacked and fire it after `delay_ms`."""
        self._held[id(delivery)] = self._scheduler.call_later(
            max(0, delay_ms) / 1000, self._due, delivery
        )

    def _due(self, delivery: Delivery) -> None:
        self._tasks.spawn(self._fire(delivery))

    async def _fire(self, delivery: Delivery) -> None:
        self._held.pop(id(delivery), None)
        remaining = (delivery.due_at_ms or 0) - self._scheduler.now_ms()
        if remaining > 0:  # timers may fire a fraction of a millisecond early: never run early
            self._hold(delivery, remaining)
            return
        job = await self._store.get(delivery.job_id) if delivery.job_id else None
        if job is not None and job.copy == delivery.copy and job.state is JobState.ACTIVE:
            try:
                await self._leases.ladder_timer_due(job, delivery)
            except OjsError as exc:  # broker away: keep holding the timer, try again shortly
                log.warning("lease timer of job %s could not fire (%s); retrying", job.id,
                            exc.message)  # fmt: skip
                self._hold(delivery, TIMER_RETRY_MS)
            return
        if (
            job is None
            or job.copy != delivery.copy
            or job.state not in (JobState.SCHEDULED, JobState.RETRYABLE)
        ):
            self._mover.settle(delivery)
            return
        await self._fire_waiting(job, delivery)

    async def _fire_waiting(self, job: Job, delivery: Delivery) -> None:
        now = self._scheduler.now_ms()
        if job.expires_at_ms is not None and job.expires_at_ms <= now:
            await self._maintenance.expire(job)
            self._mover.settle(delivery)
            return
        new = lifecycle.timer_due(job, now)
        try:
            fired = await self._mover.advance(new, delivery, job.copy)
        except OjsError as exc:  # broker away or queue full: keep holding, try again shortly
            log.warning("timer of job %s could not fire (%s); retrying", job.id, exc.message)
            self._hold(delivery, TIMER_RETRY_MS)
            return
        if fired:
            late_s = (self._scheduler.now_ms() - (delivery.due_at_ms or now)) / 1000
            self._outcomes.timer_fired(job, new, late_s)

    def let_go(self) -> None:
        """Stop holding every timer (their deliveries are void, or the daemon stops): each
        comes back from the broker and is held again."""
        for handle in self._held.values():
            handle.cancel()
        self._held.clear()
