"""Batching a worker's reports: many finished jobs, one `ojs.report.batch`, one confirm.

A persistent, confirmed report per job costs the broker a message (and the daemon a store
commit) per job; most of a fast worker's cost was there, not in the worker. Outcomes that
finish close together share one message instead (docs/amqp-protocol.md, "Control messages"):

- a batch goes when its window (`window` seconds after its first report) closes, when it
  holds `max_reports`, or when its reports plus those sent and not yet confirmed for the
  same queue reach `capacity` (the consumer's prefetch): then every delivery the broker
  lets this consumer hold waits for a report, no other can arrive to join the batch, and
  waiting would only stall the worker. With a window of 0, a batch goes at the end of the
  event-loop turn (what finished in the same turn still shares a message). Flushing
  whenever no handler is running was measured and rejected: deliveries of a quorum queue
  arrive a few at a time, so it made batches of ~3;
- one report alone goes as a plain `ojs.report.completed` / `ojs.report.failed`;
- reports go to `control.{q}` of their job's queue, so there is one pending batch per queue;
- `settled(outcomes, error)` is called once per batch after the broker's confirm (error None)
  or refusal: the worker acks the covered deliveries only then, or hands them all back.

Pure bookkeeping over two callables (send, settled), so it is unit-tested without a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from ojs_amqp.amqp import protocol
from ojs_amqp.amqp.pipe import Settled
from ojs_amqp.errors import OjsError
from ojs_amqp.sdk import control

#: send(routing_key, body, kind, settled): publish with a confirm, call `settled` later.
Send = Callable[[str, bytes, str, Settled], None]


@dataclass(slots=True, eq=False)
class Outcome:
    """A finished job whose report waits to go out; its delivery is acked after the confirm."""

    delivery_tag: int
    job_id: str
    #: protocol.COMPLETED or protocol.FAILED.
    kind: str
    #: The report's JSON object (control.completed_report / failed_report).
    report: bytes


def encode(outcomes: list[Outcome]) -> tuple[bytes, str]:
    """(body, AMQP type) of what carries these reports: one alone is a plain report."""
    if not outcomes:
        raise ValueError("nothing to report")
    if len(outcomes) > protocol.MAX_BATCH:
        raise ValueError(f"a batch carries at most {protocol.MAX_BATCH} reports")
    if len(outcomes) == 1:
        return outcomes[0].report, outcomes[0].kind
    return control.batch_body(control.batch_item(o.kind, o.report) for o in outcomes), (
        protocol.BATCH
    )


class ReportBatcher:
    """Collects outcomes per routing key and sends them in batches (see the module's text)."""

    def __init__(
        self,
        send: Send,
        settled: Callable[[list[Outcome], OjsError | None], None],
        *,
        window: float,
        max_reports: int,
        capacity: int | None = None,
    ) -> None:
        """`capacity`: deliveries a consumer may hold unacked (its prefetch), or None."""
        if not 1 <= max_reports <= protocol.MAX_BATCH:
            raise ValueError(f"max_reports must be between 1 and {protocol.MAX_BATCH}")
        if window < 0:
            raise ValueError("the batch window cannot be negative")
        self.window = window
        self.max_reports = max_reports
        self.capacity = capacity
        self._send = send
        self._settled = settled
        self._loop = asyncio.get_running_loop()
        self._pending: dict[str, list[Outcome]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._turn_end_scheduled = False
        self._in_flight = 0
        self._unconfirmed: dict[str, int] = {}
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._closed = False

    @property
    def pending(self) -> int:
        """Outcomes not sent yet."""
        return sum(len(batch) for batch in self._pending.values())

    @property
    def in_flight(self) -> int:
        """Messages sent whose confirm has not come yet."""
        return self._in_flight

    def add(self, routing_key: str, outcome: Outcome) -> None:
        """Queue a report; after abandon() it is dropped (its delivery died with the channel)."""
        if self._closed:
            return
        batch = self._pending.setdefault(routing_key, [])
        batch.append(outcome)
        if len(batch) >= self.max_reports or (
            self.capacity is not None
            and len(batch) + self._unconfirmed.get(routing_key, 0) >= self.capacity
        ):
            self._flush(routing_key)
            return
        if len(batch) > 1:
            return
        if self.window > 0:
            self._timers[routing_key] = self._loop.call_later(self.window, self._flush, routing_key)
        elif not self._turn_end_scheduled:
            self._turn_end_scheduled = True
            self._loop.call_soon(self._turn_end)

    def flush(self) -> None:
        """Send every pending batch now."""
        for routing_key in list(self._pending):
            self._flush(routing_key)

    async def drain(self, within: float) -> bool:
        """Send what is pending and wait (up to `within` s) until every batch is settled;
        False if some confirm had not come by then."""
        self.flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._quiet.wait()
        return self._in_flight == 0

    def abandon(self) -> None:
        """Forget what is pending and take no more: those deliveries are void (the channel is
        gone, or the worker stops at once), so they are neither reported nor acked."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._pending.clear()

    # --- internals -------------------------------------------------------------------------

    def _turn_end(self) -> None:
        self._turn_end_scheduled = False
        self.flush()

    def _flush(self, routing_key: str) -> None:
        timer = self._timers.pop(routing_key, None)
        if timer is not None:
            timer.cancel()
        batch = self._pending.pop(routing_key, None)
        if not batch:
            return
        body, kind = encode(batch)
        self._in_flight += 1
        self._unconfirmed[routing_key] = self._unconfirmed.get(routing_key, 0) + len(batch)
        self._quiet.clear()

        def on_settled(error: OjsError | None) -> None:
            self._in_flight -= 1
            self._unconfirmed[routing_key] -= len(batch)
            if self._in_flight == 0:
                self._quiet.set()
            self._settled(batch, error)

        self._send(routing_key, body, kind, on_settled)
