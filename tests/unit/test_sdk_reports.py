"""Batching of worker reports (ojs_amqp.sdk.reports) and the frames the pipe writes for it:
pure bookkeeping driven by a fake `send`, no broker."""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq
import orjson
import pamqp.frame
import pytest
from pamqp.commands import Basic

from ojs_amqp.amqp import protocol
from ojs_amqp.amqp.control import ControlMessage, parse_control
from ojs_amqp.amqp.pipe import confirm_error, settle_frame
from ojs_amqp.errors import BackendUnavailable, InvalidRequest, OjsError
from ojs_amqp.sdk import control
from ojs_amqp.sdk.errors import PublishRejected, Unroutable
from ojs_amqp.sdk.reports import Outcome, ReportBatcher, encode

ENVELOPE = b'{"id":"j1","type":"a.b","queue":"q","args":[1]}'


def _outcome(n: int, kind: str = protocol.COMPLETED) -> Outcome:
    common: dict[str, Any] = {
        "job_id": f"j{n}", "worker_id": "w", "copy": 1, "attempt": 1,
        "started_at_ms": 1_700_000_000_000, "envelope": ENVELOPE,
    }  # fmt: skip
    if kind == protocol.COMPLETED:
        report = control.completed_report(result={"n": n}, **common)
    else:
        report = control.failed_report(error={"code": "boom", "message": "m"}, **common)
    return Outcome(n, f"j{n}", kind, report)


class Recorder:
    """A fake `send`: records each message; the test settles them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, str, Any]] = []
        self.settled: list[tuple[list[int], OjsError | None]] = []

    def send(self, routing_key: str, body: bytes, kind: str, settled: Any) -> None:
        self.sent.append((routing_key, body, kind, settled))

    def on_settled(self, outcomes: list[Outcome], error: OjsError | None) -> None:
        self.settled.append(([o.delivery_tag for o in outcomes], error))

    def batcher(
        self, window: float = 0.05, max_reports: int = 100, capacity: int | None = None
    ) -> ReportBatcher:
        return ReportBatcher(
            self.send, self.on_settled, window=window, max_reports=max_reports, capacity=capacity
        )


# --- encoding ------------------------------------------------------------------------------


def test_one_outcome_goes_as_a_plain_report() -> None:
    outcome = _outcome(1, protocol.FAILED)
    assert encode([outcome]) == (outcome.report, protocol.FAILED)


def test_a_batch_is_what_the_daemon_parses_back_into_each_report() -> None:
    outcomes = [_outcome(1), _outcome(2, protocol.FAILED), _outcome(3)]
    body, kind = encode(outcomes)
    assert kind == protocol.BATCH
    parsed = parse_control(kind, body)
    reports = parsed.reports
    assert all(isinstance(r, ControlMessage) for r in reports)
    assert [r.kind for r in reports if isinstance(r, ControlMessage)] == [
        protocol.COMPLETED, protocol.FAILED, protocol.COMPLETED,
    ]  # fmt: skip
    first, second, _ = reports
    assert isinstance(first, ControlMessage) and isinstance(second, ControlMessage)
    assert first.job_id == "j1" and first.result == {"n": 1} and first.copy == 1
    assert first.envelope == orjson.loads(ENVELOPE)
    assert second.failure is not None and second.failure.code == "boom"
    assert body.count(ENVELOPE) == 3  # spliced verbatim, not re-encoded


@pytest.mark.parametrize("kind", [[], {}, ["ojs.report.completed"], 5, None])
def test_a_batched_report_whose_type_is_not_a_string_is_refused_alone(kind: object) -> None:
    """Found by the AMQP fuzz: an unhashable `type` crashed the control consumer."""
    fine_report = {"type": protocol.COMPLETED, "job_id": "j2"}
    body = orjson.dumps({"reports": [{"type": kind, "job_id": "j"}, fine_report]})
    refused, fine = parse_control(protocol.BATCH, body).reports
    assert isinstance(refused, InvalidRequest) and refused.details == {"field": "type"}
    assert isinstance(fine, ControlMessage) and fine.job_id == "j2"


def test_batch_limits() -> None:
    with pytest.raises(ValueError):
        encode([])
    with pytest.raises(ValueError):
        encode([_outcome(n) for n in range(protocol.MAX_BATCH + 1)])
    assert encode([_outcome(n) for n in range(protocol.MAX_BATCH)])[1] == protocol.BATCH


def test_batch_item_puts_the_type_first_in_the_same_object() -> None:
    item = control.batch_item(protocol.COMPLETED, b'{"job_id":"j"}')
    assert item == b'{"type":"ojs.report.completed","job_id":"j"}'
    assert orjson.loads(control.batch_item(protocol.FAILED, b"{}")) == {"type": protocol.FAILED}
    with pytest.raises(ValueError):
        control.batch_item(protocol.COMPLETED, b"[1]")
    body = control.batch_body([b'{"a":1}', b'{"b":2}'])
    assert orjson.loads(body) == {"reports": [{"a": 1}, {"b": 2}]}


def test_the_first_heartbeat_can_carry_the_envelope() -> None:
    beat = orjson.loads(control.heartbeat("j", "w", ENVELOPE))
    assert beat == {"job_id": "j", "worker_id": "w", "job": orjson.loads(ENVELOPE)}
    parsed = parse_control(protocol.HEARTBEAT, control.heartbeat("j", "w", ENVELOPE))
    assert parsed.envelope == orjson.loads(ENVELOPE)
    assert "job" not in orjson.loads(control.heartbeat("j", "w"))


# --- the batcher ---------------------------------------------------------------------------


async def test_outcomes_within_the_window_share_one_message() -> None:
    """No wall-clock window: the flush is armed for `window` ahead on the loop's clock and
    run by hand (the timer firing on its own is covered by the per-routing-key test)."""
    rec = Recorder()
    batcher = rec.batcher(window=10.0)
    for n in range(3):
        batcher.add("control.q", _outcome(n))
    await asyncio.sleep(0)
    assert rec.sent == [] and batcher.pending == 3
    loop = asyncio.get_running_loop()
    due_in = batcher._timers["control.q"].when() - loop.time()
    assert 9.0 < due_in <= 10.0, due_in
    batcher.flush()
    assert len(rec.sent) == 1
    key, body, kind, settled = rec.sent[0]
    assert (key, kind) == ("control.q", protocol.BATCH)
    assert len(orjson.loads(body)["reports"]) == 3
    assert batcher.pending == 0 and batcher.in_flight == 1
    settled(None)
    assert rec.settled == [([0, 1, 2], None)] and batcher.in_flight == 0


async def test_a_full_batch_goes_at_once_and_the_rest_waits_for_its_own_window() -> None:
    rec = Recorder()
    batcher = rec.batcher(window=10.0, max_reports=2)
    for n in range(3):
        batcher.add("control.q", _outcome(n))
    assert [kind for _, _, kind, _ in rec.sent] == [protocol.BATCH]
    assert batcher.pending == 1
    batcher.flush()
    assert [kind for _, _, kind, _ in rec.sent] == [protocol.BATCH, protocol.COMPLETED]


async def test_a_batch_goes_at_once_when_every_delivery_the_consumer_may_hold_waits() -> None:
    """capacity = prefetch: with 4 deliveries unconfirmed and 2 pending, no 7th delivery can
    arrive, so waiting out the window would only stall the worker."""
    rec = Recorder()
    batcher = rec.batcher(window=10.0, capacity=6)
    for n in range(4):
        batcher.add("control.q", _outcome(n))
    batcher.flush()
    assert len(rec.sent) == 1
    batcher.add("control.q", _outcome(4))
    batcher.add("control.other", _outcome(9))  # another queue: its own consumer and prefetch
    assert len(rec.sent) == 1
    batcher.add("control.q", _outcome(5))
    assert len(rec.sent) == 2 and batcher.pending == 1
    rec.sent[0][3](None)  # the first four are confirmed: room again
    batcher.add("control.q", _outcome(6))
    assert len(rec.sent) == 2 and batcher.pending == 2


async def test_batches_are_per_routing_key() -> None:
    rec = Recorder()
    batcher = rec.batcher(window=0)  # one loop turn: no wall-clock window to wait out
    batcher.add("control.a", _outcome(1))
    batcher.add("control.b", _outcome(2))
    batcher.add("control.a", _outcome(3))
    await asyncio.sleep(0)
    sent = {key: orjson.loads(body) for key, body, _, _ in rec.sent}
    assert set(sent) == {"control.a", "control.b"}
    assert [r["job_id"] for r in sent["control.a"]["reports"]] == ["j1", "j3"]
    assert sent["control.b"]["job_id"] == "j2"  # alone: a plain report


async def test_window_zero_batches_what_finishes_in_the_same_loop_turn() -> None:
    rec = Recorder()
    batcher = rec.batcher(window=0)
    batcher.add("control.q", _outcome(1))
    batcher.add("control.q", _outcome(2))
    assert rec.sent == []
    await asyncio.sleep(0)
    assert [kind for _, _, kind, _ in rec.sent] == [protocol.BATCH]
    batcher.add("control.q", _outcome(3))
    await asyncio.sleep(0)
    assert [kind for _, _, kind, _ in rec.sent] == [protocol.BATCH, protocol.COMPLETED]


async def test_max_one_means_every_report_goes_alone_at_once() -> None:
    rec = Recorder()
    batcher = rec.batcher(window=10.0, max_reports=1)
    batcher.add("control.q", _outcome(1))
    batcher.add("control.q", _outcome(2, protocol.FAILED))
    assert [kind for _, _, kind, _ in rec.sent] == [protocol.COMPLETED, protocol.FAILED]


async def test_a_refused_batch_settles_every_outcome_with_the_error() -> None:
    rec = Recorder()
    batcher = rec.batcher(window=0)
    for n in (7, 8, 9):
        batcher.add("control.q", _outcome(n))
    await asyncio.sleep(0)
    error = Unroutable("no route")
    rec.sent[0][3](error)
    assert rec.settled == [([7, 8, 9], error)]


async def test_drain_sends_what_is_pending_and_waits_for_the_confirms() -> None:
    rec = Recorder()
    batcher = rec.batcher(window=10.0)
    batcher.add("control.q", _outcome(1))
    batcher.add("control.q", _outcome(2))
    draining = asyncio.create_task(batcher.drain(5.0))
    await asyncio.sleep(0.01)
    assert len(rec.sent) == 1 and not draining.done()
    rec.sent[0][3](None)
    assert await draining is True
    assert rec.settled == [([1, 2], None)]


async def test_drain_gives_up_after_its_time() -> None:
    rec = Recorder()
    batcher = rec.batcher(window=10.0)
    batcher.add("control.q", _outcome(1))
    assert await batcher.drain(0.02) is False
    assert batcher.in_flight == 1


async def test_abandon_forgets_pending_outcomes_and_refuses_new_ones() -> None:
    rec = Recorder()
    batcher = rec.batcher(window=0.01)
    batcher.add("control.q", _outcome(1))
    batcher.abandon()
    batcher.add("control.q", _outcome(2))
    await asyncio.sleep(0.03)
    assert rec.sent == [] and batcher.pending == 0


async def test_batcher_settings_are_checked() -> None:
    rec = Recorder()
    with pytest.raises(ValueError):
        rec.batcher(max_reports=0)
    with pytest.raises(ValueError):
        rec.batcher(max_reports=protocol.MAX_BATCH + 1)
    with pytest.raises(ValueError):
        rec.batcher(window=-1)


# --- the pipe's frames and confirm outcomes ------------------------------------------------


@pytest.mark.parametrize("tag", [1, 255, 2**40 + 3])
def test_packed_ack_and_reject_frames_match_pamqp(tag: int) -> None:
    assert settle_frame(80, 3, tag, False) == pamqp.frame.marshal(Basic.Ack(delivery_tag=tag), 3)
    assert settle_frame(90, 7, tag, True) == pamqp.frame.marshal(
        Basic.Reject(delivery_tag=tag, requeue=True), 7
    )


async def test_confirm_outcomes_map_to_sdk_errors() -> None:
    loop = asyncio.get_running_loop()

    def settled(result: Any = None, exc: BaseException | None = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = loop.create_future()
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future

    assert confirm_error(settled(Basic.Ack(delivery_tag=1)), "x", "k") is None
    assert isinstance(confirm_error(settled(Basic.Nack(delivery_tag=1)), "x", "k"), PublishRejected)
    # What aiormq sets on a mandatory publish the broker returned (built without a frame).
    returned = aiormq.exceptions.PublishError.__new__(aiormq.exceptions.PublishError)
    assert isinstance(confirm_error(settled(exc=returned), "x", "k"), Unroutable)
    assert isinstance(confirm_error(settled(exc=RuntimeError("x")), "x", "k"), BackendUnavailable)
    cancelled: asyncio.Future[Any] = loop.create_future()
    cancelled.cancel()
    assert isinstance(confirm_error(cancelled, "x", "k"), BackendUnavailable)
