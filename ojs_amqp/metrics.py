"""Prometheus collectors on a registry we own (no process globals; each test gets its own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ojs_amqp.core.job import Job


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("queue", "type")
        self._enqueued = Counter(
            "ojs_job_enqueued", "Jobs accepted", labels, registry=self.registry
        )
        self._completed = Counter(
            "ojs_job_completed", "Jobs completed", labels, registry=self.registry
        )
        self._failed = Counter("ojs_job_failed", "Failed attempts", labels, registry=self.registry)
        self._duration = Histogram(
            "ojs_job_duration_seconds", "Time from fetch to ack", labels, registry=self.registry
        )
        self.queue_depth = Gauge(
            "ojs_queue_depth", "Jobs by queue and state", ("queue", "state"), registry=self.registry
        )
        self.reconnections = Gauge(
            "ojs_amqp_reconnections_total", "Broker reconnections", registry=self.registry
        )

    def enqueued(self, job: Job) -> None:
        self._enqueued.labels(job.queue, job.type).inc()

    def completed(self, job: Job, seconds: float) -> None:
        self._completed.labels(job.queue, job.type).inc()
        self._duration.labels(job.queue, job.type).observe(seconds)

    def failed(self, job: Job) -> None:
        self._failed.labels(job.queue, job.type).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
