"""Health words and codes (ojs-observability §10) for broker states hard to cause on demand:
a broker link that is down, a ping that does not come back, a store that fails."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from ojs_amqp.engine.workers import WorkerRegistry
from ojs_amqp.errors import BackendUnavailable, BrokerStalled
from ojs_amqp.http import system_routes
from ojs_amqp.http.app import HttpApi
from ojs_amqp.http.server import Request, Response
from ojs_amqp.settings import Settings


class _Broker:
    def __init__(self, connected: bool, ping_s: float = 0.0) -> None:
        self.connected = connected
        self.stall: str | None = None
        self.server_version = "3.10.0"
        self._ping_s = ping_s

    async def ping(self, timeout_s: float) -> float:
        """Like Broker.ping: a ping past its bound is a stall, and the stall is recorded."""
        if not self.connected:
            raise BackendUnavailable("the broker is not connected")
        try:
            await asyncio.wait_for(asyncio.sleep(self._ping_s), timeout_s)
        except TimeoutError:
            self.stall = f"the broker did not answer a ping within {timeout_s:g} s"
            raise BrokerStalled(self.stall, waited_for="a ping", timeout_s=timeout_s) from None
        return self._ping_s * 1000


class _Store:
    kind = "sqlite"  # what health reports as the store's type

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails

    async def outbox_size(self) -> int:
        if self.fails:
            raise RuntimeError("the store is not open")
        return 0


class _Engine:
    def __init__(self, broker: _Broker, store: _Store) -> None:
        self.broker = broker
        self.store = store
        self.workers = WorkerRegistry()


async def _get(engine: _Engine, path: str) -> tuple[int, dict[str, Any]]:
    api = HttpApi(engine, None, Settings())  # type: ignore[arg-type]
    answer = await api.handle(Request("GET", path, "", {}, b""))
    assert isinstance(answer, Response)
    return answer.status, orjson.loads(answer.body)


async def test_a_lost_broker_is_unhealthy_with_503_and_not_ready() -> None:
    engine = _Engine(_Broker(connected=False), _Store())
    status, body = await _get(engine, "/ojs/v1/health")
    assert status == 503 and body["status"] == "unhealthy"
    assert body["backend"]["status"] == "unhealthy" and "not connected" in body["backend"]["error"]
    assert body["components"]["store"]["status"] == "ok"
    status, ready = await _get(engine, "/ready")
    assert status == 503 and ready["broker"] == "unhealthy"
    assert ready["reasons"] == ["the broker link is down"]
    status, live = await _get(engine, "/health")  # liveness does not follow the broker
    assert status == 200 and live["status"] == "ok"


async def test_a_ping_past_its_bound_is_degraded_and_a_failing_store_unhealthy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(system_routes, "HEALTH_PING_S", 0.05)
    status, body = await _get(
        _Engine(_Broker(connected=True, ping_s=5.0), _Store()), "/ojs/v1/health"
    )
    assert status == 200 and body["status"] == "degraded"
    assert "did not answer a ping within 0.05 s" in body["backend"]["reason"]
    engine = _Engine(_Broker(connected=True), _Store(fails=True))
    status, body = await _get(engine, "/ojs/v1/health")
    assert status == 503 and body["status"] == "unhealthy"
    assert body["components"]["store"] == {"type": "sqlite", "status": "unhealthy",
                                           "error": "the store is not open"}  # fmt: skip
    assert (await _get(engine, "/ready"))[0] == 503
