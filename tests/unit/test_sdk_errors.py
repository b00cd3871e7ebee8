"""Mapping the daemon's error replies to OjsError classes, and the reply router (pure)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from ojs_amqp.errors import (
    BackendUnavailable,
    Conflict,
    Duplicate,
    InvalidPayload,
    InvalidRequest,
    NotFound,
    OjsError,
    ValidationFailed,
)
from ojs_amqp.sdk.errors import error_from_reply
from ojs_amqp.sdk.rpc import ReplyRouter, read_reply


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("not_found", NotFound),
        ("conflict", Conflict),
        ("duplicate", Duplicate),
        ("invalid_request", InvalidRequest),
        ("invalid_payload", InvalidPayload),
        ("validation_error", ValidationFailed),
        ("backend_error", BackendUnavailable),
    ],
)
def test_known_codes_map_to_the_project_classes(code: str, cls: type[OjsError]) -> None:
    err = error_from_reply({"code": code, "message": "m", "details": {"job_id": "j"}})
    assert type(err) is cls
    assert err.code == code and err.message == "m" and err.details == {"job_id": "j"}


def test_an_unknown_code_keeps_its_code() -> None:
    err = error_from_reply({"code": "rate_limited", "message": "slow down"})
    assert isinstance(err, OjsError)
    assert err.code == "rate_limited" and err.message == "slow down"
    assert type(error_from_reply({"code": "rate_limited"})) is type(err)  # one class per code


def test_malformed_errors_still_raise_an_ojs_error() -> None:
    assert type(error_from_reply("boom")) is OjsError
    err = error_from_reply({"message": 3})
    assert type(err) is OjsError and err.details == {}


def test_read_reply_returns_the_payload_or_raises_the_mapped_error() -> None:
    assert read_reply(b'{"job": {"id": "j"}}') == {"job": {"id": "j"}}
    body = orjson.dumps({"error": {"code": "not_found", "message": "job j not found"}})
    with pytest.raises(NotFound, match="job j not found"):
        read_reply(body)
    with pytest.raises(OjsError, match="invalid JSON"):
        read_reply(b"nope")
    with pytest.raises(OjsError, match="non-object"):
        read_reply(b"[1]")


async def test_router_matches_answers_by_correlation_id_and_drops_strays() -> None:
    router = ReplyRouter()
    cid, future = router.expect()
    other, pending = router.expect()
    assert len(router) == 2
    assert not router.deliver("stranger", b"{}")
    assert router.deliver(cid, b'{"ok": 1}')
    assert await future == b'{"ok": 1}'
    assert not router.deliver(cid, b"{}")  # answered already
    router.forget(other)
    assert not router.deliver(other, b"{}")
    assert len(router) == 0
    pending.cancel()


async def test_router_fails_every_waiting_call_when_the_channel_goes() -> None:
    router = ReplyRouter()
    futures = [router.expect()[1] for _ in range(3)]
    router.fail_all(BackendUnavailable("gone"))
    for future in futures:
        with pytest.raises(BackendUnavailable):
            await future
    assert len(router) == 0
    await asyncio.sleep(0)
