"""`ojs-amqp worker MODULE:ATTR`: loading the target and applying the flags (no broker)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from ojs_amqp.cli import _parser
from ojs_amqp.sdk import Worker
from ojs_amqp.sdk.runner import load_target, worker_from_args

TARGETS = "tests.integration.sdk_handlers"


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["worker", *argv])


@pytest.mark.parametrize(
    "spec", ["nocolon", "tests.no_such_module:x", f"{TARGETS}:missing", f"{TARGETS}:time"]
)
def test_bad_targets_exit_2(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        load_target(spec)
    assert raised.value.code == 2
    assert "ojs-amqp worker:" in capsys.readouterr().err


def test_a_worker_target_keeps_its_settings_unless_a_flag_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OJS_AMQP_URL", "OJS_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    worker = worker_from_args(_args(f"{TARGETS}:worker"))
    assert worker.queues == ["cli"] and worker.heartbeat_interval == 0.5
    assert worker.topology.prefix == ""
    changed = worker_from_args(
        _args(f"{TARGETS}:worker", "--queue", "a", "--queue", "b", "--concurrency", "3",
              "--prefix", "p", "--grace-period", "2")
    )  # fmt: skip
    assert changed.queues == ["a", "b"] and changed.concurrency == 3
    assert changed.topology.prefix == "p" and changed.grace_period == 2
    assert set(changed.handlers) == {"sdk.slow"}
    assert changed.prefetch == 9 and changed.report_batch_ms == 5.0
    batching = worker_from_args(
        _args(f"{TARGETS}:worker", "--report-batch-ms", "0.5", "--report-batch-max", "7",
              "--prefetch", "40")
    )  # fmt: skip
    assert batching.report_batch_ms == 0.5 and batching.report_batch_max == 7
    assert batching.prefetch == 40 and batching.queues == ["cli"]


def test_a_dict_target_becomes_a_worker_with_those_handlers() -> None:
    worker = worker_from_args(_args(f"{TARGETS}:handlers", "--queue", "q"))
    assert isinstance(worker, Worker)
    assert set(worker.handlers) == {"sdk.slow", "sdk.slow-thread"}
    assert worker.handlers.has_sync


def test_invalid_settings_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--queue", "dlx.bad"], ["--concurrency", "0"], ["--report-batch-max", "1001"],
                 ["--report-batch-ms", "-1"], ["--prefetch", "0"]):  # fmt: skip
        with pytest.raises(SystemExit) as raised:
            worker_from_args(_args(f"{TARGETS}:handlers", *argv))
        assert raised.value.code == 2


def test_load_target_returns_the_object(monkeypatch: Any) -> None:
    assert isinstance(load_target(f"{TARGETS}:worker"), Worker)
