"""The spec's competing shapes, read and written both ways: heartbeats (HTTP binding vs worker
protocol), cron answers (HTTP binding §13 vs OpenAPI), and the JSON media type switch."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import pytest

from ojs_amqp.cli import _parser, settings_from
from ojs_amqp.engine.cron import cron_to_wire
from ojs_amqp.errors import InvalidRequest
from ojs_amqp.http import schemas
from ojs_amqp.http.app import HttpApi
from ojs_amqp.http.server import Request, Response
from ojs_amqp.settings import Settings

# --- heartbeat ---------------------------------------------------------------------------


def test_a_heartbeat_with_active_jobs_as_a_list_names_those_jobs() -> None:
    beat = schemas.parse(schemas.HeartbeatIn, {"worker_id": "w", "active_jobs": ["a", "b"]})
    assert beat.job_ids() == ["a", "b"]


def test_a_worker_protocol_heartbeat_counts_active_jobs_and_lists_active_job_ids() -> None:
    body = {"worker_id": "w", "state": "running", "active_jobs": 2,
            "active_job_ids": ["a", "b"], "hostname": "h", "pid": 1, "queues": ["q"]}  # fmt: skip
    beat = schemas.parse(schemas.HeartbeatIn, body)
    assert beat.job_ids() == ["a", "b"]
    assert schemas.parse(schemas.HeartbeatIn, {"active_jobs": 0}).job_ids() == []


def test_the_single_job_id_form_still_works_alongside() -> None:
    beat = schemas.parse(schemas.HeartbeatIn, {"active_jobs": 1, "job_id": "c"})
    assert beat.job_ids() == ["c"]


@pytest.mark.parametrize("active_jobs", ["3", [1, 2], {"n": 1}, True])
def test_active_jobs_that_is_neither_a_count_nor_a_list_of_ids_is_refused(
    active_jobs: Any,
) -> None:
    with pytest.raises(InvalidRequest, match="active_jobs"):
        schemas.parse(schemas.HeartbeatIn, {"worker_id": "w", "active_jobs": active_jobs})


# --- cron --------------------------------------------------------------------------------

STORED = {
    "name": "nightly", "expression": "0 3 * * *", "timezone": "UTC", "overlap_policy": "skip",
    "enabled": True, "description": None, "created_at_ms": 0, "next_run_at_ms": 3_600_000,
    "last_run_at_ms": None, "run_count": 0, "last_job_id": None,
    "job_template": {"type": "report.nightly", "args": [1], "meta": {"m": 1},
                     "options": {"queue": "reports"}},
}  # fmt: skip


def test_a_cron_answer_carries_the_openapi_and_the_binding_fields() -> None:
    wire = cron_to_wire(STORED)
    # OpenAPI: expression, job_template, enabled
    assert wire["expression"] == "0 3 * * *" and wire["enabled"] is True
    assert wire["job_template"] == STORED["job_template"]
    # HTTP binding §13: cron, type, args, meta, options, status
    assert wire["cron"] == "0 3 * * *" and wire["status"] == "active"
    assert (wire["type"], wire["args"], wire["meta"]) == ("report.nightly", [1], {"m": 1})
    assert wire["options"] == {"queue": "reports"}
    assert wire["next_run_at"] == "1970-01-01T01:00:00.000Z" and wire["last_run_at"] is None
    assert cron_to_wire({**STORED, "enabled": False})["status"] == "paused"


# --- response media type -----------------------------------------------------------------


def _answer(settings: Settings, method: str, path: str) -> Response:
    api = HttpApi(cast(Any, None), cast(Any, None), settings)
    answer = asyncio.run(api.handle(Request(method, path, "", {}, b"")))
    assert isinstance(answer, Response)
    return answer


@pytest.mark.parametrize("path", ["/ojs/manifest", "/ojs/v1/nothing", "/ojs/v1/workflows"])
def test_json_answers_use_the_chosen_media_type(path: str) -> None:
    method = "POST" if path.endswith("workflows") else "GET"
    default = _answer(Settings(), method, path)
    assert ("Content-Type", "application/openjobspec+json") in default.headers
    plain = _answer(Settings(response_media_type="application/json"), method, path)
    types = [v for k, v in plain.headers if k == "Content-Type"]
    assert types == ["application/json"]
    assert json.loads(plain.body) and ("OJS-Version", "1.0") in plain.headers


def test_the_media_type_comes_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert settings_from(_parser().parse_args(["serve"])).response_media_type == (
        "application/openjobspec+json"
    )
    args = _parser().parse_args(["serve", "--response-media-type", "application/json"])
    assert settings_from(args).response_media_type == "application/json"
    monkeypatch.setenv("OJS_RESPONSE_MEDIA_TYPE", "application/json")
    assert settings_from(_parser().parse_args(["serve"])).response_media_type == (
        "application/json"
    )


def test_only_the_two_json_media_types_are_accepted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--response-media-type", "text/plain"])
    assert "invalid choice" in capsys.readouterr().err
    monkeypatch.setenv("OJS_RESPONSE_MEDIA_TYPE", "application/xml")
    with pytest.raises(SystemExit, match="--response-media-type must be one of"):
        settings_from(_parser().parse_args(["serve"]))
