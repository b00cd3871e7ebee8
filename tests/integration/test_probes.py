"""Probes and shutdown (ext-observability, ext-graceful-shutdown) against a real daemon and
broker: health per component, /health and /ready, worker drain beats and worker health,
/metrics as `text/plain` that Prometheus still parses, /ready during a SIGTERM drain."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

import orjson
from prometheus_client.parser import text_string_to_metric_families

from ojs_amqp.clock import now_ms
from ojs_amqp.engine.cron import CronScheduler
from ojs_amqp.engine.jobs import JobEngine
from ojs_amqp.http.app import HttpApi
from ojs_amqp.http.server import Request, Response
from tests.daemon import Daemon, request


def _raw(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def test_health_reports_each_component_and_the_root_probes_answer(module_daemon: Daemon) -> None:
    url = module_daemon.url
    status, health = request("GET", f"{url}/ojs/v1/health")
    assert status == 200 and health["status"] == "ok"
    assert health["backend"]["status"] == "ok" and health["backend"]["connected"] is True
    assert health["components"]["broker"] == health["backend"]
    assert health["components"]["store"]["status"] == "ok"
    status, headers, body = _raw(f"{url}/health", {"X-Request-ID": "probe-1"})
    assert status == 200 and orjson.loads(body)["status"] == "ok"
    assert headers["x-request-id"] == "probe-1"
    status, headers, _ = _raw(f"{url}/health")
    assert headers["x-request-id"].startswith("req_")
    status, ready = request("GET", f"{url}/ready")
    assert status == 200 and ready["status"] == "ok" and ready["ready"] is True
    assert (ready["broker"], ready["store"], ready["draining"]) == ("ok", "ok", False)
    status, manifest = request("GET", f"{url}/ojs/manifest")
    assert [e["uri"] for e in manifest["extensions"]["official"]] == [
        "urn:ojs:ext:progress", "urn:ojs:ext:observability", "urn:ojs:ext:graceful-shutdown",
        "urn:ojs:ext:admin-api", "urn:ojs:ext:dead-letter",
    ]  # fmt: skip


def test_a_draining_worker_gets_no_new_jobs_and_its_health_says_drain(
    module_daemon: Daemon,
) -> None:
    url = f"{module_daemon.url}/ojs/v1"
    queue = f"gs-{uuid.uuid4().hex[:8]}"
    worker = f"w-{uuid.uuid4().hex[:6]}"
    status, pushed = request("POST", f"{url}/jobs", {"type": "gs.job", "args": [],
                                                     "options": {"queue": queue}})  # fmt: skip
    assert status == 201
    status, beat = request(
        "POST", f"{url}/workers/beat", {"worker_id": worker, "state": "drain", "active_jobs": 0}
    )
    assert status == 200
    assert (beat["acknowledged"], beat["state"], beat["directive"]) == (True, "drain", "running")
    status, fetched = request("POST", f"{url}/workers/fetch", {"queues": [queue],
                                                               "worker_id": worker})  # fmt: skip
    assert status == 200 and fetched["jobs"] == []
    status, health = request("GET", f"{url}/workers/{worker}/health")
    assert status == 503 and health["state"] == "drain" and health["active_jobs"] == 0
    # Running again, it gets the job that waited meanwhile.
    status, beat = request("POST", f"{url}/workers/beat", {"worker_id": worker, "state": "running"})
    assert beat["state"] == "running"
    status, fetched = request("POST", f"{url}/workers/fetch", {"queues": [queue],
                                                               "worker_id": worker})  # fmt: skip
    assert [j["id"] for j in fetched["jobs"]] == [pushed["job"]["id"]]
    status, health = request("GET", f"{url}/workers/{worker}/health")
    assert status == 200 and health["state"] == "running"
    # A beat naming its job extends that lease, like a heartbeat.
    status, beat = request(
        "POST", f"{url}/workers/beat",
        {"worker_id": worker, "active_jobs": [pushed["job"]["id"]]},
    )  # fmt: skip
    assert beat["jobs_extended"] == [pushed["job"]["id"]]
    status, error = request("GET", f"{url}/workers/nobody-{worker}/health")
    assert status == 404 and error["error"]["code"] == "not_found"
    status, error = request("POST", f"{url}/workers/beat", {"worker_id": worker, "state": "nap"})
    assert status == 400 and error["error"]["details"]["field"] == "state"


def test_metrics_are_plain_text_that_prometheus_parses(module_daemon: Daemon) -> None:
    request("POST", f"{module_daemon.url}/ojs/v1/jobs", {"type": "m.probe", "args": []})
    status, headers, body = _raw(f"{module_daemon.url}/metrics", {"Accept": "text/plain"})
    assert status == 200 and headers["content-type"] == "text/plain"
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["ojs_job_enqueued"].type == "counter"
    assert any(s.labels.get("type") == "m.probe" for s in families["ojs_job_enqueued"].samples)
    assert families["ojs_queue_depth"].type == "gauge"


async def test_a_broker_stall_makes_the_health_degraded_with_its_reason(
    live_engine: JobEngine,
) -> None:
    cron = CronScheduler(live_engine, live_engine.store, live_engine.transport, clock=now_ms)
    api = HttpApi(live_engine, cron, live_engine.settings)

    async def health() -> tuple[int, dict[str, object]]:
        answer = await api.handle(Request("GET", "/ojs/v1/health", "", {}, b""))
        assert isinstance(answer, Response)
        return answer.status, orjson.loads(answer.body)

    status, body = await health()
    assert status == 200 and body["status"] == "ok"
    live_engine.broker.stall = "a publish confirm took longer than 5 s"
    try:
        status, body = await health()
    finally:
        live_engine.broker.stall = None
    assert status == 200 and body["status"] == "degraded"
    backend = body["backend"]
    assert isinstance(backend, dict)
    assert backend["status"] == "degraded"
    assert backend["reason"] == "a publish confirm took longer than 5 s"


def test_sigterm_makes_ready_answer_503_while_the_daemon_drains(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--shutdown-delay-ms", "3000")
    assert request("GET", f"{daemon.url}/ready")[0] == 200
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 2.5
    status, ready = request("GET", f"{daemon.url}/ready")
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
        status, ready = request("GET", f"{daemon.url}/ready")
    assert status == 503 and ready["draining"] is True and ready["ready"] is False
    assert "shutting down" in ready["reasons"][0]
    # Still serving while it drains: health stays 200 and says so.
    status, health = request("GET", f"{daemon.url}/ojs/v1/health")
    assert status == 200 and health["draining"] is True
    assert daemon.process.wait(20) == 0
