"""Leases: active jobs held by HTTP workers, their timers, and how a lease ends.

A lease is an unacked delivery handed to a worker; the daemon enforces its visibility and
execution timeouts. Held past `delivery_hold_ms`, its delivery is handed over to a timer on
the delay ladder (acked) before the broker's consumer_timeout closes the channel over it.
Every lease that ends without its worker's answer ends through `_end_expired`, whichever
way it was found: its own timer, a redelivery of a job no daemon holds (a restart), or the
ladder timer of a daemon that died.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from ojs_amqp.core import lifecycle
from ojs_amqp.core.job import Job, JobState
from ojs_amqp.core.retry import FailureReport
from ojs_amqp.engine.dispatch import Buffered, Lease
from ojs_amqp.engine.kinds import LeaseKind
from ojs_amqp.engine.moves import Mover
from ojs_amqp.engine.outcomes import Outcomes
from ojs_amqp.engine.ports import Delivery, JobRecords, Scheduler
from ojs_amqp.engine.progress import Progress
from ojs_amqp.engine.tasks import Tasks
from ojs_amqp.errors import BackendUnavailable, Conflict, OjsError
from ojs_amqp.settings import Settings

log = logging.getLogger("ojs_amqp.engine")

#: How soon a lease expiry or handover that could not be published (broker away, queue
#: full) is tried again.
LEASE_RETRY_S = 1.0
#: How far past a held lease's deadline its ladder timer is moved (it is the fallback).
TIMER_RETRY_MS = 1000


class Leases:
    def __init__(
        self,
        settings: Settings,
        store: JobRecords,
        scheduler: Scheduler,
        mover: Mover,
        outcomes: Outcomes,
        progress: Progress,
        tasks: Tasks,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._store = store
        self._scheduler = scheduler
        self._mono = scheduler.monotonic
        self._mover = mover
        self._outcomes = outcomes
        self._progress = progress
        self._tasks = tasks
        self._rng = rng
        self._hold_s = settings.delivery_hold_ms / 1000
        self._leases: dict[str, Lease] = {}

    # --- queries ---------------------------------------------------------------------------

    def get(self, job_id: str) -> Lease | None:
        return self._leases.get(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def by_worker(self) -> dict[str, list[str]]:
        """The jobs leased to each HTTP worker now (worker id -> job ids)."""
        out: dict[str, list[str]] = {}
        for job_id, lease in self._leases.items():
            if lease.worker_id:
                out.setdefault(lease.worker_id, []).append(job_id)
        return out

    def held_per_queue(self) -> dict[str, int]:
        """Leases whose delivery is still held unacked, per queue."""
        held: dict[str, int] = {}
        for lease in self._leases.values():
            if lease.message is not None:
                held[lease.job.queue] = held.get(lease.job.queue, 0) + 1
        return held

    # --- granting --------------------------------------------------------------------------

    async def grant(
        self, d: Buffered, worker_id: str | None, visibility_ms: int | None, now: int
    ) -> Job | None:
        """Hand a buffered job to a worker. The store write is a compare-and-set on the copy
        number and the state: a lease or an ack keeps the copy number, so only the state
        tells a job leased, finished or cancelled since it was buffered; it is dropped."""
        job = d.job
        new = lifecycle.fetch(job, now, worker_id)
        if not await self._store.update(new, expect_copy=job.copy, expect_state=JobState.AVAILABLE):
            self._mover.settle(d.message)
            return None
        s = self._settings
        vis = job.visibility_timeout_ms or visibility_ms or s.default_visibility_timeout_ms
        timeout = job.timeout_ms or s.default_timeout_ms
        mono = self._mono()
        lease = Lease(new, worker_id, d.message, vis, mono + vis / 1000, mono + timeout / 1000,
                      held_since=mono)  # fmt: skip
        self._leases[job.id] = lease
        self.arm(lease)
        self._outcomes.started(job, new, now)
        return new

    def arm(self, lease: Lease) -> None:
        self._stop_timer(lease)
        when, kind = lease.next_event(self._hold_s)
        handle = self._scheduler.call_later(
            max(0.0, when - self._mono()), self._timer_fired, lease.job_id, kind
        )
        lease.timer = handle.cancel

    def _timer_fired(self, job_id: str, kind: LeaseKind) -> None:
        if kind is LeaseKind.HANDOVER:
            self._tasks.spawn(self.hand_over(job_id))
        else:
            self._tasks.spawn(self.expire(job_id, kind))

    def _retry_later(self, lease: Lease, kind: LeaseKind) -> None:
        self._stop_timer(lease)
        handle = self._scheduler.call_later(LEASE_RETRY_S, self._timer_fired, lease.job_id, kind)
        lease.timer = handle.cancel

    @staticmethod
    def _stop_timer(lease: Lease) -> None:
        if lease.timer is not None:
            lease.timer()
            lease.timer = None

    def deadline_ms(self, lease: Lease) -> int:
        """The lease's next deadline on the wall clock (for a timer on the ladder)."""
        deadline, _ = lease.next_deadline()
        return self._scheduler.now_ms() + max(0, round((deadline - self._mono()) * 1000))

    async def hand_over(self, job_id: str) -> None:
        """A lease held for `delivery_hold_ms`: before the broker's consumer_timeout closes
        the gateway channel over it, a lease timer goes on the delay ladder (the job's
        current copy, due at the lease deadline) and the delivery is acked. The job stays
        active under its worker; the timer is what returns it to its queue if this daemon
        is gone when the deadline comes (`ladder_timer_due`). Nothing changes state, so
        nothing is recorded: publish, then ack."""
        lease = self._leases.get(job_id)
        if lease is None:
            return
        message = lease.message
        if message is None:  # its delivery went with a lost channel: only the deadline left
            self.arm(lease)
            return
        try:
            await self._mover.park(lease.job, self.deadline_ms(lease))
        except OjsError as exc:  # broker away: keep holding it; tried again shortly
            log.warning("lease of job %s could not be handed over (%s)", job_id, exc.message)
            self._retry_later(lease, LeaseKind.HANDOVER)
            return
        if self._leases.get(job_id) is lease and lease.message is message:
            self._mover.settle(message)
            lease.message, lease.held_since = None, None
            self.arm(lease)

    # --- ending without the worker's answer ------------------------------------------------

    async def _end_expired(self, job: Job, kind: LeaseKind, current: Delivery | None) -> bool:
        """The one path of a lease that ran out: retried or discarded per its policy (a
        visibility timeout counts as a failed attempt), counted in `ojs_lease_expired`."""
        job = self._progress.with_progress(job)
        now = self._scheduler.now_ms()
        new = lifecycle.lease_expired(job, now, kind, self._rng)
        # Still active as read: an ack or nack recorded meanwhile keeps the copy number.
        if not await self._mover.advance(new, current, job.copy, JobState.ACTIVE):
            return False
        self._outcomes.lease_expired(job, new, now, kind)
        return True

    async def expire(self, job_id: str, kind: LeaseKind) -> None:
        """A lease this daemon holds reached its deadline."""
        lease = self._leases.get(job_id)
        job = await self._store.get(job_id)
        if lease is None or job is None or job.state is not JobState.ACTIVE:
            self._leases.pop(job_id, None)
            return
        try:
            ended = await self._end_expired(job, kind, lease.message)
        except BackendUnavailable:
            # The broker is away: try again shortly (a reconnect re-arms it too), never
            # leave the job active with no timer.
            self._retry_later(lease, kind)
            return
        if ended:
            self._leases.pop(job_id, None)

    async def recover_active(self, job: Job, delivery: Delivery) -> None:
        """A delivery of a job recorded as active. Held here: redelivered after a reconnect
        while its worker still has it. Not held: the daemon restarted while a worker held
        it, and the lease is gone (a visibility timeout, found now)."""
        lease = self._leases.get(job.id)
        if lease is None:
            await self._end_expired(job, LeaseKind.VISIBILITY, delivery)
            return
        # Re-arm: a deadline that passed while the broker was away fires now.
        lease.message, lease.held_since = delivery, self._mono()
        if delivery.returns > 0:
            # Returned by the broker: hand it over now (a lease timer on the ladder, this
            # delivery acked), so a lease outliving many reconnects is never
            # dead-lettered at the queue's delivery limit under its worker.
            await self.hand_over(job.id)
            return
        self.arm(lease)

    async def ladder_timer_due(self, job: Job, delivery: Delivery) -> None:
        """The ladder timer of a handed-over lease. While this daemon holds the lease its own
        timer decides (heartbeats may have moved the deadline): the ladder timer moves on to
        the current deadline. A lease this daemon does not hold was lost with a daemon that
        died: the job returns to its queue, as after a visibility timeout. Raises OjsError
        when the broker is away (the caller holds the timer and tries again)."""
        lease = self._leases.get(job.id)
        if lease is None:
            await self._end_expired(job, LeaseKind.VISIBILITY, delivery)
            return
        if lease.message is None:  # still the only thing that outlives this daemon
            await self._mover.park(lease.job, self.deadline_ms(lease) + TIMER_RETRY_MS)
        self._mover.settle(delivery)

    # --- the worker's answers --------------------------------------------------------------

    async def _owned_active(self, job_id: str, worker_id: str | None) -> tuple[Job, Lease | None]:
        lease = self._leases.get(job_id)
        job = (
            self._progress.with_progress(lease.job)
            if lease is not None
            else await self._progress.read(job_id)
        )
        if job.state is not JobState.ACTIVE:
            raise Conflict(
                f"job {job_id} is {job.state.value}, not active",
                details={"job_id": job_id, "current_state": job.state.value},
            )
        if worker_id and job.worker_id and worker_id != job.worker_id:
            raise Conflict(
                f"job {job_id} is leased to worker {job.worker_id}, not {worker_id}",
                details={"job_id": job_id, "worker_id": job.worker_id},
            )
        return job, lease

    async def ack(self, job_id: str, result: Any, worker_id: str | None) -> Job:
        job, lease = await self._owned_active(job_id, worker_id)
        now = self._scheduler.now_ms()
        new = lifecycle.ack(job, now, result)
        if not await self._store.update(new, expect_copy=job.copy):
            raise Conflict(f"job {job_id} changed concurrently; GET it to see its state")
        self.take(job_id)
        if lease is not None:
            self._mover.settle(lease.message)
        self._outcomes.completed(job, new, now)
        return new

    async def nack(
        self, job_id: str, report: FailureReport, worker_id: str | None, requeue: bool
    ) -> Job:
        job, lease = await self._owned_active(job_id, worker_id)
        now = self._scheduler.now_ms()
        if requeue:
            new = lifecycle.requeue(job, now)
        else:
            new = lifecycle.fail(job, now, report, self._rng)
        if not await self._mover.advance(new, lease.message if lease else None, job.copy):
            raise Conflict(f"job {job_id} changed concurrently; GET it to see its state")
        self.take(job_id)
        if requeue:
            # The attempt is given back: the next one has the same number, and must not
            # show this one's progress (kept in memory until the next flush otherwise).
            self._progress.forget(job_id)
            self._outcomes.requeued(job, new)
        else:
            self._outcomes.failed(job, new, now)
        return new

    def extend(self, job_id: str, worker_id: str | None, visibility_ms: int | None) -> bool:
        """A heartbeat: push the lease's visibility deadline out; False if not held (by
        that worker)."""
        lease = self._leases.get(job_id)
        if lease is None or (worker_id and lease.worker_id and lease.worker_id != worker_id):
            return False
        vis = visibility_ms or lease.visibility_ms
        lease.visibility_deadline = self._mono() + vis / 1000
        self.arm(lease)
        return True

    def touch(self, job_id: str) -> None:
        """Progress reported counts as a heartbeat (PRG-008)."""
        lease = self._leases.get(job_id)
        if lease is not None:
            lease.visibility_deadline = self._mono() + lease.visibility_ms / 1000
            self.arm(lease)

    # --- letting go ------------------------------------------------------------------------

    def take(self, job_id: str) -> Lease | None:
        """Remove a lease (its job moved on), its timer stopped; its delivery, if any, is
        the caller's to settle."""
        lease = self._leases.pop(job_id, None)
        if lease is not None:
            self._stop_timer(lease)
        return lease

    def drop_queue(self, queue: str) -> None:
        for job_id in [i for i, lease in self._leases.items() if lease.job.queue == queue]:
            self.take(job_id)

    def forget_deliveries(self, queue: str | None = None) -> None:
        """The deliveries held (of one queue, or all) are void; a lease keeps its job and
        takes the redelivered message when it comes (`recover_active`)."""
        for lease in self._leases.values():
            if queue is None:
                lease.message = None
            elif lease.job.queue == queue:
                lease.message, lease.held_since = None, None

    def stop_timers(self) -> None:
        for lease in self._leases.values():
            self._stop_timer(lease)

    def reset(self) -> None:
        self.stop_timers()
        self._leases.clear()
