"""The daemon's own endpoints: the manifest, health (per component), liveness and readiness
probes, Prometheus metrics and the test-mode reset."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ojs_amqp import __version__
from ojs_amqp.core.envelope import UNHONOURED_OPTIONS
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.errors import BackendUnavailable, BrokerStalled, NoSuchEndpoint
from ojs_amqp.http import unsupported
from ojs_amqp.http.admin import EXTENSIONS as ADMIN_EXTENSIONS
from ojs_amqp.http.messages import Request, Response
from ojs_amqp.http.responses import json_response
from ojs_amqp.http.routing import BASE, RouteRow
from ojs_amqp.settings import Settings

#: A broker ping slower than this reports the broker `degraded` (every broker wait is bounded).
HEALTH_PING_S = 2.0


class SystemRoutes:
    def __init__(self, engine: JobEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._started = time.monotonic()
        #: Set on SIGTERM, before the server stops: /ready answers 503 from then on.
        self.draining = False

    def routes(self) -> list[RouteRow]:
        return [
            ("GET", "/ojs/manifest", self.manifest),
            ("GET", f"{BASE}/health", self.health),
            ("GET", "/health", self.liveness),
            ("GET", "/ready", self.readiness),
            ("GET", "/metrics", self.metrics),
            ("POST", f"{BASE}/admin/reset", self.reset),
        ]

    async def manifest(self, request: Request) -> Response:
        return json_response(
            {
                "specversion": "1.0",
                "ojs_version": "1.0",
                "implementation": {
                    "name": "ojs-amqp",
                    "version": __version__,
                    "language": "python",
                    "homepage": "https://github.com/ojs-amqp/ojs-amqp",
                },
                "conformance_level": 2,
                "conformance_tier": "runtime",
                "protocols": ["http", "amqp"],  # the native binding: docs/amqp-binding.md
                "backend": "rabbitmq",
                "capabilities": {
                    "batch_enqueue": False,
                    "cron_jobs": True,
                    "cron": True,  # the official admin UI's name for it
                    "events": True,  # GET /ojs/v1/events (and its admin UI shape)
                    "dead_letter": True,
                    "delayed_jobs": True,
                    "job_ttl": True,
                    "priority_queues": True,
                    "rate_limiting": False,
                    "schema_validation": False,
                    "unique_jobs": False,
                    "workflows": False,
                    "pause_resume": False,
                    **unsupported.capabilities_off(),
                },
                "extensions": {
                    "official": [
                        {"name": "progress", "uri": "urn:ojs:ext:progress"},
                        {"name": "observability", "uri": "urn:ojs:ext:observability"},
                        {"name": "graceful-shutdown", "uri": "urn:ojs:ext:graceful-shutdown"},
                        *ADMIN_EXTENSIONS,
                    ],
                    "experimental": [],
                },
                "unsupported": [f.manifest_entry() for f in unsupported.MISSING],
                "unsupported_options": [
                    {"option": name, "feature": feature, "spec": spec}
                    for name, (feature, spec) in UNHONOURED_OPTIONS.items()
                ],
                "limits": {"max_body_bytes": self.settings.max_body_bytes},
            }
        )

    async def health(self, request: Request) -> Response:
        """Overall status and each component's, as `ok` / `degraded` / `unhealthy`
        (ojs-observability §10): 200 unless something is unhealthy, then 503."""
        components = {"broker": await self._broker_health(), "store": await self._store_health()}
        status = _worst(c["status"] for c in components.values())
        return json_response(
            {
                "status": status,
                "version": __version__,
                "uptime_seconds": int(time.monotonic() - self._started),
                "backend": components["broker"],
                "components": components,
                "draining": self.draining,
                "workers": self.engine.workers.counts(),
            },
            503 if status == "unhealthy" else 200,
        )

    async def _broker_health(self) -> dict[str, Any]:
        broker = self.engine.broker
        out: dict[str, Any] = {"type": "rabbitmq", "version": broker.server_version,
                               "connected": broker.connected}  # fmt: skip
        if broker.stall is not None and broker.connected:  # answer now, no ping to wait on
            return {**out, "status": "degraded", "reason": broker.stall}
        try:
            out["latency_ms"] = round(await broker.ping(timeout_s=HEALTH_PING_S), 2)
        except BrokerStalled:  # recorded as a stall: the broker's probe checks the link
            out["status"] = "degraded"
            out["reason"] = broker.stall or (
                f"the broker did not answer a ping within {HEALTH_PING_S:g} s"
            )
            return out
        except Exception as exc:  # any failure to reach the broker: the link is down
            out["status"] = "unhealthy"
            out["error"] = str(exc) or type(exc).__name__
            return out
        stall = broker.stall
        out["status"] = "degraded" if stall else "ok"
        if stall:
            out["reason"] = stall
        return out

    async def _store_health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.engine.store.kind}
        start = time.perf_counter()
        try:
            await self.engine.store.outbox_size()  # one indexed count: the store answers
        except Exception as exc:
            return {**out, "status": "unhealthy", "error": str(exc) or type(exc).__name__}
        return {**out, "status": "ok", "latency_ms": round((time.perf_counter() - start) * 1000, 2)}

    async def liveness(self, request: Request) -> Response:
        """`/health` for load balancers and liveness probes: the process serves requests.
        Deliberately blind to the broker (the daemon reconnects by itself; a restart would
        not bring a broker back): readiness is what follows the broker."""
        return json_response(
            {"status": "ok", "draining": self.draining,
             "uptime_seconds": int(time.monotonic() - self._started)}
        )  # fmt: skip

    async def readiness(self, request: Request) -> Response:
        """`/ready`: 200 once the broker link and the store are up, 503 while either is
        not, and from SIGTERM on (draining), so the pod leaves the Service first."""
        broker = self.engine.broker
        store = await self._store_health()
        reasons = []
        if self.draining:
            reasons.append("the daemon is shutting down")
        if not broker.connected:
            reasons.append("the broker link is down")
        if store["status"] != "ok":
            reasons.append(f"the store does not answer: {store.get('error')}")
        body: dict[str, Any] = {"status": "unhealthy" if reasons else "ok", "ready": not reasons,
                                "broker": "ok" if broker.connected else "unhealthy",
                                "store": store["status"], "draining": self.draining}  # fmt: skip
        if reasons:
            body["reasons"] = reasons
        return json_response(body, 503 if reasons else 200)

    async def metrics(self, request: Request) -> Response:
        engine = self.engine
        m = engine.metrics
        m.queue_depth.clear()
        for (queue, state), count in (await engine.store.count_by_state()).items():
            m.queue_depth.labels(queue, state).set(count)
        m.outbox_pending.set(await engine.store.outbox_size())
        m.connections_active.set(engine.broker.open_connections())
        m.channels_active.set(engine.broker.open_channels())
        # Cleared first: a queue no longer consumed for HTTP workers drops out of these.
        m.messages_unacked.clear()
        for queue, holder, count in engine.unacked_deliveries():
            m.messages_unacked.labels(queue, holder).set(count)
        m.consumer_utilization.clear()
        for queue, ratio in engine.consumer_utilization().items():
            m.consumer_utilization.labels(queue).set(ratio)
        # Exactly `text/plain`, as ext-observability checks; Prometheus reads that as its text
        # format 0.0.4 (tests/integration/test_probes.py parses it with prometheus_client).
        return Response(m.render(), headers=[("Content-Type", "text/plain")])

    async def reset(self, request: Request) -> Response:
        if not self.settings.test_mode:
            raise NoSuchEndpoint(
                f"no such endpoint: {request.path}", details={"path": request.path}
            )
        if not self.engine.broker.connected:
            raise BackendUnavailable("the broker is not connected")
        await self.engine.reset()
        return json_response({"reset": True})

    # --- jobs ------------------------------------------------------------------------------


def _worst(statuses: Iterable[str]) -> str:
    order = ("ok", "degraded", "unhealthy")
    return max(statuses, key=order.index, default="ok")
