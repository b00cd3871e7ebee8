"""Maintenance: jobs past their expires_at, and retention of finished jobs and dead letters."""

from __future__ import annotations

import logging
from typing import Protocol

from ojs_amqp.core import lifecycle
from ojs_amqp.core.job import Job
from ojs_amqp.engine.dispatch import ReadyBuffers
from ojs_amqp.engine.moves import Mover
from ojs_amqp.engine.outcomes import Outcomes
from ojs_amqp.engine.ports import Housekeeping, JobRecords, Scheduler
from ojs_amqp.settings import Settings

log = logging.getLogger("ojs_amqp.engine")

#: Expired jobs handled per sweep (the sweep runs each second).
EXPIRY_BATCH = 500


class MaintenanceStore(JobRecords, Housekeeping, Protocol):
    """(the store roles maintenance uses)"""


class Maintenance:
    def __init__(
        self,
        settings: Settings,
        store: MaintenanceStore,
        scheduler: Scheduler,
        mover: Mover,
        buffers: ReadyBuffers,
        outcomes: Outcomes,
    ) -> None:
        self._settings = settings
        self._store = store
        self._scheduler = scheduler
        self._mover = mover
        self._buffers = buffers
        self._outcomes = outcomes

    async def expire(self, job: Job) -> None:
        now = self._scheduler.now_ms()
        new = lifecycle.expire(job, now)
        if await self._store.update(new, expect_copy=job.copy):
            buffered = self._buffers.remove(job.id)
            if buffered is not None:
                self._mover.settle(buffered.message)
            self._outcomes.expired(job, new, now)

    async def expire_due(self) -> None:
        for job in await self._store.expiring(self._scheduler.now_ms(), EXPIRY_BATCH):
            await self.expire(job)

    @property
    def prune_period_s(self) -> float:
        """Retention runs once a minute, or more often when a retention is that short."""
        s = self._settings
        shortest_ms = min(s.retention_completed_ms, s.retention_discarded_ms,
                          s.dead_letter_max_age_ms)  # fmt: skip
        return max(1.0, min(60.0, shortest_ms / 4000))

    async def prune(self) -> None:
        now = self._scheduler.now_ms()
        s = self._settings
        removed = await self._store.prune_finished(
            now - s.retention_completed_ms, now - s.retention_discarded_ms
        )
        if removed:
            log.info("retention removed %d finished jobs", removed)
        pruned = await self._store.prune_dead_letters(
            now - s.dead_letter_max_age_ms, s.dead_letter_max_per_queue
        )
        if pruned:
            log.info("dead-letter retention removed %d dead letters", pruned)
            self._outcomes.dead_letters_pruned(pruned)
