"""The worker's pure decisions: handlers, expiry, attempts, reports (no broker)."""

from __future__ import annotations

import functools
from typing import Any

import orjson
import pytest

from ojs_amqp.amqp import protocol
from ojs_amqp.core.times import format_ms
from ojs_amqp.errors import InvalidRequest
from ojs_amqp.sdk import JobContext, Worker
from ojs_amqp.sdk.handlers import HandlerRegistry, is_async
from ojs_amqp.sdk.worker import (
    attempt_of,
    attempts_spent,
    expired,
    lost_deliveries,
    max_attempts_of,
)

NOW = 1_800_000_000_000


async def _async_handler(ctx: JobContext, extra: int = 0) -> int:
    return extra


def _sync_handler(ctx: JobContext) -> int:
    return 1


class _AsyncCallable:
    async def __call__(self, ctx: JobContext) -> None:
        return None


def test_async_detection() -> None:
    assert is_async(_async_handler)
    assert is_async(functools.partial(_async_handler, extra=1))
    assert is_async(_AsyncCallable())
    assert not is_async(_sync_handler)
    assert not is_async(lambda ctx: None)


def test_handlers_register_by_decorator_and_from_a_dict() -> None:
    worker = Worker(handlers={"a.sync": _sync_handler})

    @worker.handler("a.async")
    async def handle(ctx: JobContext) -> None:
        return None

    assert set(worker.handlers) == {"a.sync", "a.async"}
    assert worker.handlers["a.async"] is handle
    found = worker.handlers.lookup("a.sync")
    assert found is not None and not found.is_async
    assert worker.handlers.has_sync
    assert worker.handlers.lookup("nope") is None


def test_bad_registrations_are_refused() -> None:
    registry = HandlerRegistry()
    with pytest.raises(InvalidRequest):
        registry.register("Bad Type", _sync_handler)
    with pytest.raises(TypeError):
        registry.register("a.b", 3)  # type: ignore[arg-type]


def test_worker_settings_are_validated() -> None:
    with pytest.raises(InvalidRequest):
        Worker(queues=["dlx.x"])
    with pytest.raises(ValueError):
        Worker(queues=[])
    with pytest.raises(ValueError):
        Worker(concurrency=0)
    assert Worker(queues="one").queues == ["one"]


def test_configured_keeps_handlers_and_changes_settings() -> None:
    worker = Worker(prefix="p", queues=["a"], handlers={"a.b": _sync_handler})
    copy = worker.configured(queues=["b", "c"], concurrency=3)
    assert copy.queues == ["b", "c"] and copy.concurrency == 3
    assert copy.topology.prefix == "p" and dict(copy.handlers) == {"a.b": _sync_handler}
    assert copy.worker_id == worker.worker_id


def test_report_batching_and_prefetch_settings() -> None:
    worker = Worker(concurrency=8)
    assert worker.report_batch_ms == 5.0 and worker.report_batch_max == 100
    # Deliveries whose batched report awaits its confirm still count against prefetch.
    assert worker.prefetch == 24
    assert Worker(concurrency=30_000).prefetch == 65_535
    tuned = Worker(concurrency=8, prefetch=9, report_batch_ms=0, report_batch_max=1)
    assert (tuned.prefetch, tuned.report_batch_ms, tuned.report_batch_max) == (9, 0, 1)
    copy = tuned.configured(concurrency=3)
    assert (copy.prefetch, copy.report_batch_ms, copy.report_batch_max) == (9, 0, 1)
    assert worker.configured(concurrency=3).prefetch == 9  # the default follows concurrency
    for bad in ({"report_batch_ms": -1}, {"report_batch_max": 0},
                {"report_batch_max": protocol.MAX_BATCH + 1}, {"prefetch": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            Worker(**bad)


def test_expiry() -> None:
    assert expired({"expires_at": format_ms(NOW)}, NOW)
    assert not expired({"expires_at": format_ms(NOW + 1)}, NOW)
    assert not expired({}, NOW)
    assert not expired({"expires_at": "garbage"}, NOW)


def test_attempt_comes_from_the_header_else_the_envelope() -> None:
    assert attempt_of({"x-ojs-attempt": 3}, {"attempt": 0}) == 3
    assert attempt_of({}, {"attempt": 1}) == 2
    assert attempt_of({"x-ojs-attempt": True}, {}) == 1
    assert attempt_of({"x-ojs-attempt": 0}, {"attempt": "x"}) == 1


def _ctx() -> JobContext:
    return JobContext("j1", "a.b", "q", [1], 2, "w1", {"id": "j1", "meta": {"k": "v"}})


def test_lost_deliveries_come_from_the_quorum_queue_delivery_count() -> None:
    assert lost_deliveries({"x-delivery-count": 2}) == 2
    assert lost_deliveries({}) == 0
    assert lost_deliveries({"x-delivery-count": True}) == 0
    assert lost_deliveries({"x-delivery-count": -1}) == 0


def test_max_attempts_comes_from_the_header_else_the_retry_policy_else_is_unknown() -> None:
    assert max_attempts_of({"x-ojs-max-attempts": 2}, {"retry": {"max_attempts": 5}}) == 2
    assert max_attempts_of({}, {"retry": {"max_attempts": 5}}) == 5
    assert max_attempts_of({}, {"max_attempts": 4}) == 4
    assert max_attempts_of({}, {"retry": "x"}) is None


def test_attempts_spent_counts_each_return_of_the_copy_as_a_lost_attempt() -> None:
    headers = {"x-ojs-attempt": 2, "x-ojs-max-attempts": 3, "x-delivery-count": 1}
    assert attempts_spent(headers, {}) == (2, 3)
    assert attempts_spent({"x-ojs-max-attempts": 0}, {}) == (0, 1)
    assert attempts_spent({"x-delivery-count": 9}, {}) == (9, -1)


def test_context_meta() -> None:
    assert _ctx().meta == {"k": "v"}
    assert JobContext("j", "a.b", "q", [], 1, "w", {"meta": 3}).meta == {}


def _report(ok: bool, outcome: Any) -> tuple[dict[str, Any], str]:
    worker = Worker(worker_id="w1")
    body, kind = worker._report(_ctx(), 4, NOW, b'{"id":"j1"}', ok, outcome)
    return orjson.loads(body), kind


def test_success_reports_completed_with_the_result() -> None:
    report, kind = _report(True, {"n": 1})
    assert kind == protocol.COMPLETED
    assert report["result"] == {"n": 1} and report["copy"] == 4 and report["attempt"] == 2
    assert report["job"] == {"id": "j1"} and report["started_at"] == format_ms(NOW)


def test_an_unserialisable_result_is_reported_as_a_failure() -> None:
    report, kind = _report(True, {1, 2})
    assert kind == protocol.FAILED
    assert report["error"]["code"] == "unserializable_result"


def test_a_failure_reports_the_error() -> None:
    report, kind = _report(False, {"code": "handler_error", "message": "m", "type": "E"})
    assert kind == protocol.FAILED
    assert report["error"] == {"code": "handler_error", "message": "m", "type": "E"}
