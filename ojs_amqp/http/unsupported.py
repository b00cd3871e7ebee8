"""Endpoints of OJS features this daemon does not serve yet, as one table.

SDKs call them; a 404 would read as "job not found" to them, so each answers the spec's 422
`unsupported` naming the feature and the conformance level or extension it belongs to, and the
manifest says the feature is off. When a feature lands, delete its row: a served route always
wins over a row (served routes are registered first), and a unit test flags rows that shadow
served routes. The rows come from walking the conformance suites' steps
(tests/unit/test_unsupported.py checks that every route they call is served or listed here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class MissingFeature:
    """A feature not built yet: its endpoints and where the spec puts it."""

    feature: str
    spec: str
    routes: tuple[str, ...]
    #: The conformance level it belongs to, or else the extension (suite directory).
    level: int | None = None
    extension: str | None = None
    #: The manifest capability that reads False while this row exists ("" = none).
    capability: str = ""
    #: What to use instead, when something close is served.
    instead: str = ""

    @property
    def part_of(self) -> str:
        if self.level is not None:
            return f"conformance level {self.level} ({self.spec})"
        return f"the {self.extension} extension ({self.spec})"

    def message(self, method: str, path: str) -> str:
        text = f"{method} {path} is not supported by this daemon: {self.feature}, part of "
        text += f"{self.part_of}."
        return f"{text} {self.instead}" if self.instead else text

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"feature": self.feature, "spec": self.spec}
        if self.level is not None:
            out["level"] = self.level
        if self.extension is not None:
            out["extension"] = self.extension
        return out

    def manifest_entry(self) -> dict[str, Any]:
        return {**self.details(), "endpoints": list(self.routes)}


_JOB_OPS = "use the HTTP binding's POST /ojs/v1/workers/fetch, /ack and /nack"

MISSING: tuple[MissingFeature, ...] = (
    MissingFeature(
        "workflows (chain, group, batch)", "ojs-workflows", level=3, capability="workflows",
        routes=("POST /ojs/v1/workflows", "GET /ojs/v1/workflows/{id}",
                "DELETE /ojs/v1/workflows/{id}"),
    ),
    MissingFeature(
        "batch enqueue", "ojs-bulk-operations", level=4, capability="batch_enqueue",
        routes=("POST /ojs/v1/jobs/batch",), instead="Push the jobs one by one.",
    ),
    MissingFeature(
        "queue pause and resume", "ojs-http-binding", level=4, capability="pause_resume",
        routes=("POST /ojs/v1/queues/{name}/pause", "POST /ojs/v1/queues/{name}/resume",
                "POST /ojs/v1/admin/queues/{name}/pause",
                "POST /ojs/v1/admin/queues/{name}/resume"),
    ),
    MissingFeature(
        "queue details and configuration", "ojs-queue-config", extension="ext-multi-tenancy",
        capability="queue_config",
        routes=("GET /ojs/v1/queues/{name}", "PUT /ojs/v1/queues/{name}"),
        instead="GET /ojs/v1/admin/queues/{name} has a queue's detail; "
        "PUT /ojs/v1/admin/queues/{name}/config sets its backpressure.",
    ),
    MissingFeature(
        "fair scheduling", "ojs-fair-scheduling", extension="ext-fair-scheduling",
        capability="fair_scheduling",
        routes=("PUT /ojs/v1/admin/pools/{name}", "GET /ojs/v1/admin/scheduling/stats"),
    ),
    MissingFeature(
        "the schema registry", "ojs-schema-registry", extension="ext-schema-registry",
        capability="schema_registry",
        routes=("GET /ojs/v1/admin/schemas/{type}", "GET /ojs/v1/admin/schemas/{type}/{version}",
                "PUT /ojs/v1/admin/schemas/{type}/{version}",
                "DELETE /ojs/v1/admin/schemas/{type}/{version}"),
    ),
    MissingFeature(
        "tenant statistics", "ojs-multi-tenancy", extension="ext-multi-tenancy",
        capability="multi_tenancy", routes=("GET /ojs/v1/admin/tenants/{tenant}/stats",),
    ),
    MissingFeature(
        "checkpoints (durable execution)", "ojs-durable-execution",
        extension="ext-durable-execution", capability="durable_execution",
        routes=("GET /ojs/v1/jobs/{id}/checkpoint", "PUT /ojs/v1/jobs/{id}/checkpoint",
                "DELETE /ojs/v1/jobs/{id}/checkpoint"),
    ),
    MissingFeature(
        "rate-limit inspection", "ojs-rate-limiting", extension="ext-rate-limiting",
        capability="rate_limiting", routes=("GET /ojs/v1/rate-limits/{key}",),
    ),
    MissingFeature(
        "webhooks", "ojs-webhooks", extension="ext-webhooks", capability="webhooks",
        routes=("GET /ojs/v1/webhooks/subscriptions", "POST /ojs/v1/webhooks/subscriptions",
                "GET /ojs/v1/webhooks/subscriptions/{id}",
                "PATCH /ojs/v1/webhooks/subscriptions/{id}",
                "DELETE /ojs/v1/webhooks/subscriptions/{id}"),
    ),
    MissingFeature(
        "job-path ack and nack", "ojs-encryption", extension="ext-encryption",
        instead=f"Not in the HTTP binding; {_JOB_OPS}.",
        routes=("POST /ojs/v1/jobs/{id}/ack", "POST /ojs/v1/jobs/{id}/nack"),
    ),
    MissingFeature(
        "job-path cancel", "ojs-multi-tenancy", extension="ext-multi-tenancy",
        instead="Not in the HTTP binding; DELETE /ojs/v1/jobs/{id} cancels.",
        routes=("POST /ojs/v1/jobs/{id}/cancel",),
    ),
    MissingFeature(
        "WASI runtime workers", "ojs-ext-runtime", extension="labs/wasi",
        routes=("POST /ojs/v1/jobs/fetch",), instead=f"Not in the HTTP binding; {_JOB_OPS}.",
    ),
    MissingFeature(
        "AI agent control", "ojs-ai-agents", extension="labs/agent",
        routes=tuple(f"POST /ojs/v1/agents/{{id}}/{op}"
                     for op in ("pause", "resume", "fork", "merge", "tool-retry")),
    ),
    MissingFeature(
        "attestation", "ojs-attest", extension="labs/attest",
        routes=("POST /ojs/v1/attest/verify", "GET /ojs/v1/jobs/{id}/receipt"),
    ),
)  # fmt: skip


def routes() -> list[tuple[str, str, MissingFeature]]:
    """(method, path template, feature) for every row."""
    out = []
    for feature in MISSING:
        for route in feature.routes:
            method, _, path = route.partition(" ")
            out.append((method, path, feature))
    return out


def capabilities_off() -> dict[str, bool]:
    """Manifest capabilities that read False because their feature is in the table."""
    return {f.capability: False for f in MISSING if f.capability}
