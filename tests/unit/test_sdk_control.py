"""Report and control-message building of the SDK (pure)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ojs_amqp.amqp import protocol
from ojs_amqp.amqp.control import parse_control
from ojs_amqp.core.times import format_ms
from ojs_amqp.sdk import control
from ojs_amqp.sdk.errors import JobError

ENVELOPE = b'{"id":"j1","type":"email.send","queue":"mail","args":[1]}'
STARTED = 1_700_000_000_123


def _common(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "job_id": "j1", "worker_id": "w1", "copy": 3, "attempt": 2,
        "started_at_ms": STARTED, "envelope": ENVELOPE,
    }  # fmt: skip
    base.update(changes)
    return base


def test_completed_report_carries_result_copy_attempt_start_and_the_envelope_verbatim() -> None:
    body = control.completed_report(result={"sent": True}, **_common())
    report = orjson.loads(body)
    assert report == {
        "job_id": "j1",
        "worker_id": "w1",
        "started_at": format_ms(STARTED),
        "copy": 3,
        "attempt": 2,
        "job": orjson.loads(ENVELOPE),
        "result": {"sent": True},
    }
    assert ENVELOPE in body  # spliced, not re-encoded


def test_completed_report_omits_absent_fields() -> None:
    report = orjson.loads(
        control.completed_report(result=None, **_common(copy=None, attempt=None, envelope=None))
    )
    assert set(report) == {"job_id", "worker_id", "started_at"}


def test_a_result_that_is_not_json_raises_so_the_worker_can_report_a_failure() -> None:
    with pytest.raises(TypeError):
        control.completed_report(result=object(), **_common())


def test_error_of_a_plain_exception_names_its_class_and_keeps_a_bounded_traceback() -> None:
    try:
        raise ValueError("bad address " + "x" * 5000)
    except ValueError as exc:
        error = control.error_of(exc)
    assert error["code"] == control.HANDLER_ERROR
    assert error["type"] == "ValueError"
    assert error["message"].startswith("bad address")
    assert len(error["message"]) == control.MAX_MESSAGE_CHARS
    assert "retryable" not in error
    trace = error["details"]["traceback"]
    assert "test_sdk_control.py" in trace and len(trace) <= control.MAX_TRACEBACK_CHARS


def test_error_of_an_exception_without_message_uses_its_class_name() -> None:
    error = control.error_of(KeyError(), with_traceback=False)
    assert error == {"code": "handler_error", "message": "KeyError", "type": "KeyError"}


def test_job_error_chooses_code_retryable_and_details() -> None:
    exc = JobError("mailbox full", code="smtp_552", retryable=False, details={"mx": "a"})
    error = control.error_of(exc, with_traceback=False)
    assert error == {
        "code": "smtp_552",
        "message": "mailbox full",
        "type": "JobError",
        "retryable": False,
        "details": {"mx": "a"},
    }


def test_failed_report_serialises_odd_details_rather_than_failing() -> None:
    error = {"code": "handler_error", "message": "m", "details": {"when": object()}}
    report = orjson.loads(control.failed_report(error=error, **_common()))
    assert report["error"]["code"] == "handler_error"
    assert isinstance(report["error"]["details"]["when"], str)
    assert report["copy"] == 3 and report["job"]["id"] == "j1"


def test_unknown_type_error_lists_what_is_registered() -> None:
    error = control.unknown_type_error("x.y", ["b.a", "a.b"])
    assert error["code"] == "unknown_type"
    assert error["details"] == {"job_type": "x.y", "registered": ["a.b", "b.a"]}


def test_properties_are_persistent_json_with_the_kind_and_fresh_each_time() -> None:
    first = control.properties(protocol.COMPLETED)
    second = control.properties(protocol.COMPLETED)
    assert first is not second  # aiormq writes a message id into each
    assert first.message_type == protocol.COMPLETED
    assert first.delivery_mode == 2
    assert first.content_type == "application/json"
    rpc = control.properties(protocol.INFO, reply_to="amq.rabbitmq.reply-to", correlation_id="c")
    assert rpc.reply_to == "amq.rabbitmq.reply-to" and rpc.correlation_id == "c"


def test_small_bodies() -> None:
    assert orjson.loads(control.heartbeat("j", "w")) == {"job_id": "j", "worker_id": "w"}
    assert orjson.loads(control.hello(["a", "b"], "w")) == {"queues": ["a", "b"], "worker_id": "w"}
    assert orjson.loads(control.hello(["a"], None)) == {"queues": ["a"]}
    assert orjson.loads(control.job_request("j")) == {"job_id": "j"}


def test_timeout_error_uses_the_daemons_code() -> None:
    error = control.timeout_error(250)
    assert error["code"] == error["type"] == "timeout"
    assert "250" in error["message"]


def test_a_restart_question_is_a_heartbeat_the_daemon_parses_as_started() -> None:
    body = control.restart("j1", "w1", 4, b'{"type":"t","args":[]}', 2)
    parsed = parse_control(protocol.HEARTBEAT, body)
    assert (parsed.job_id, parsed.worker_id, parsed.copy) == ("j1", "w1", 4)
    assert (parsed.started, parsed.delivery_count) == (True, 2)
    assert parsed.envelope == {"type": "t", "args": []}
    plain = parse_control(protocol.HEARTBEAT, control.heartbeat("j1", "w1"))
    assert (plain.started, plain.delivery_count) == (False, 0)


def test_a_worker_lost_error_names_the_attempts_and_the_delivery_count() -> None:
    error = control.worker_lost_error(3, 3, 2)
    assert (error["code"], error["type"]) == ("worker_lost", "worker_lost")
    assert error["details"] == {"delivery_count": 2, "max_attempts": 3}
    assert "attempt 3 of 3" in error["message"]


def test_a_failed_report_carries_its_attempt_to_the_daemon() -> None:
    report = control.failed_report(
        job_id="j1", worker_id="w1", copy=1, attempt=3, started_at_ms=0,
        error=control.worker_lost_error(3, 3, 2), envelope=None,
    )  # fmt: skip
    assert parse_control(protocol.FAILED, report).attempt == 3
