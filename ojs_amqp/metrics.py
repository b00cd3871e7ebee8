"""Prometheus collectors on a registry we own (no process globals; each test gets its own).

Labels are bounded: queue, job type, state, and small enums; never ids or arguments.
Gauges that mirror state (depth by state, outbox backlog, open connections and channels,
unacked deliveries, consumer utilization) are refreshed at scrape time by the HTTP layer
rather than on every move.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ojs_amqp.core.job import Job

_JOB = ("queue", "type")
#: Job run times span milliseconds to hours.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
#: Scheduling lateness is judged against 50 ms.
_LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)
_CONFIRM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        #: (collector, label values) -> child, for the per-job counters and histograms:
        #: `labels()` validates and takes a lock on every call (~2 µs, several per job).
        #: Never used for the gauges cleared at scrape time.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._enqueued = Counter("ojs_job_enqueued", "Jobs accepted", _JOB, registry=r)
        self._completed = Counter("ojs_job_completed", "Jobs completed", _JOB, registry=r)
        self._failed = Counter("ojs_job_failed", "Failed attempts", _JOB, registry=r)
        self._discarded = Counter(
            "ojs_job_discarded", "Jobs discarded", (*_JOB, "dead_letter"), registry=r
        )
        self._duration = Histogram(
            "ojs_job_duration_seconds", "Fetch to ack", _JOB, buckets=_DURATION_BUCKETS,
            registry=r,
        )  # fmt: skip
        self._queue_time = Histogram(
            "ojs_job_queue_time_seconds", "Available to fetched", _JOB,
            buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self._lateness = Histogram(
            "ojs_schedule_lateness_seconds", "Timer fired minus due time", ("queue",),
            buckets=_LATENESS_BUCKETS, registry=r,
        )  # fmt: skip
        self._lease_expired = Counter(
            "ojs_lease_expired", "Leases that ran out", ("queue", "kind"), registry=r
        )
        self.queue_depth = Gauge(
            "ojs_queue_depth", "Jobs by queue and state", ("queue", "state"), registry=r
        )
        self.outbox_pending = Gauge(
            "ojs_outbox_pending", "Pushed jobs not yet confirmed by the broker", registry=r
        )
        self.connections_active = Gauge(
            "ojs_amqp_connections_active", "Open broker connections", registry=r
        )
        self.channels_active = Gauge(
            "ojs_amqp_channels_active", "Open channels on the daemon's broker connections",
            registry=r,
        )  # fmt: skip
        self.messages_unacked = Gauge(
            "ojs_amqp_messages_unacked",
            "Deliveries the daemon holds unacked (buffered, leased, held timers)",
            ("queue", "holder"), registry=r,
        )  # fmt: skip
        self.consumer_utilization = Gauge(
            "ojs_amqp_consumer_utilization",
            "Unacked deliveries over prefetch, per job queue consumed for HTTP workers (0..1)",
            ("queue",), registry=r,
        )  # fmt: skip
        self._consumed = Counter(
            "ojs_amqp_messages_consumed", "Deliveries received from the broker", ("queue_kind",),
            registry=r,
        )  # fmt: skip
        self._reconnections = Counter("ojs_amqp_reconnections", "Broker reconnections", registry=r)
        self._published = Counter(
            "ojs_amqp_messages_published", "Confirmed publishes", ("exchange_kind",), registry=r
        )
        self._acked = Counter(
            "ojs_amqp_messages_acked", "Deliveries acked by the daemon", registry=r
        )
        self._returned = Counter(
            "ojs_amqp_messages_returned", "Publishes refused or unroutable", registry=r
        )
        self._confirm_latency = Histogram(
            "ojs_amqp_publish_confirm_latency_seconds", "Publish to broker confirm",
            buckets=_CONFIRM_BUCKETS, registry=r,
        )  # fmt: skip

        self._renewed = Counter(
            "ojs_amqp_deliveries_renewed",
            "Held job deliveries replaced by a fresh copy instead of being returned to their "
            "queue (a return counts against a quorum queue's delivery limit)", ("reason",),
            registry=r,
        )  # fmt: skip
        self._delivery_limit = Counter(
            "ojs_job_delivery_limit", "Jobs the broker dead-lettered at the queue's delivery "
            "limit (workers took them and returned them too often)", ("queue",), registry=r,
        )  # fmt: skip
        self._dead_letters_pruned = Counter(
            "ojs_dead_letter_pruned", "Dead letters removed by retention (age or count)",
            registry=r,
        )  # fmt: skip
        self._reports = Counter(
            "ojs_amqp_worker_reports", "Native worker reports and binding retries",
            ("type", "outcome"), registry=r,
        )  # fmt: skip
        self._rejected = Counter(
            "ojs_amqp_messages_rejected", "Messages moved to ojs.rejected", ("source",),
            registry=r,
        )  # fmt: skip
        self._background_failures = Counter(
            "ojs_background_failures", "Background tasks and hooks that raised (logged, the "
            "loop that ran them goes on; ojs_amqp/supervisor.py)", ("task",), registry=r,
        )  # fmt: skip
        #: 1 while the AMQP fast path (ojs_amqp/amqp/_aiormq.py) works with this aiormq.
        self.aiormq_fast_path = Gauge(
            "ojs_amqp_fast_path", "1 if the installed aiormq has the internals the fast "
            "publish/ack/frame path relies on, 0 if the slower public API is used", registry=r,
        )  # fmt: skip

    def _child(self, collector: Any, *values: str) -> Any:
        key = (collector, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = collector.labels(*values)
        return child

    # jobs
    def enqueued(self, job: Job) -> None:
        self._child(self._enqueued, job.queue, job.type).inc()

    def started(self, job: Job, queue_seconds: float) -> None:
        self._child(self._queue_time, job.queue, job.type).observe(max(0.0, queue_seconds))

    def completed(self, job: Job, seconds: float) -> None:
        self._child(self._completed, job.queue, job.type).inc()
        self._child(self._duration, job.queue, job.type).observe(max(0.0, seconds))

    def failed(self, job: Job) -> None:
        self._child(self._failed, job.queue, job.type).inc()

    def discarded(self, job: Job) -> None:
        self._discarded.labels(job.queue, job.type, str(job.dead_letter).lower()).inc()

    def renewed(self, reason: str) -> None:
        """`reason`: hold (--delivery-hold-ms), gateway_close, redelivered."""
        self._child(self._renewed, reason).inc()

    def delivery_limit_reached(self, job: Job) -> None:
        self._delivery_limit.labels(job.queue).inc()

    def dead_letters_pruned(self, count: int) -> None:
        self._dead_letters_pruned.inc(count)

    def lease_expired(self, job: Job, kind: str) -> None:
        self._lease_expired.labels(job.queue, kind).inc()

    def timer_fired(self, queue: str, late_seconds: float) -> None:
        self._lateness.labels(queue).observe(max(0.0, late_seconds))

    # broker (called through the broker's observer hooks)
    def published(self, exchange_kind: str, confirm_seconds: float) -> None:
        self._child(self._published, exchange_kind).inc()
        self._confirm_latency.observe(confirm_seconds)

    def consumed(self, queue_kind: str) -> None:
        self._child(self._consumed, queue_kind).inc()

    def acked(self) -> None:
        self._acked.inc()

    def returned(self) -> None:
        self._returned.inc()

    def report(self, kind: str, outcome: str) -> None:
        """`outcome` is applied or stale (a duplicate execution, or a report on a finished
        or cancelled job)."""
        self._child(self._reports, kind, outcome).inc()

    def rejected(self, source: str) -> None:
        self._rejected.labels(source).inc()

    def reconnected(self) -> None:
        self._reconnections.inc()

    def background_failed(self, task: str) -> None:
        self._background_failures.labels(task).inc()

    def fast_path(self, available: bool) -> None:
        self.aiormq_fast_path.set(1 if available else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
