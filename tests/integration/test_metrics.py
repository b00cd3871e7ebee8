"""/metrics reports what actually happened."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.daemon import RABBITMQCTL, Daemon, request


def _scrape(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{daemon.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_enqueued_completed_failed_and_discarded_jobs(daemon: Daemon) -> None:
    url = f"{daemon.url}/ojs/v1"
    # Given 50 jobs of which 45 succeed and 5 fail for good
    for i in range(50):
        options = {"queue": "metered", "retry": {"max_attempts": 1}}
        status, _ = request(
            "POST", f"{url}/jobs", {"type": "m.job", "args": [i], "options": options}
        )
        assert status == 201
    done = 0
    while done < 50:
        jobs = request("POST", f"{url}/workers/fetch", {"queues": ["metered"], "count": 10})[1][
            "jobs"
        ]
        for job in jobs:
            if job["args"][0] < 45:
                request("POST", f"{url}/workers/ack", {"job_id": job["id"]})
            else:
                request("POST", f"{url}/workers/nack",
                        {"job_id": job["id"], "error": {"message": "no"}})  # fmt: skip
            done += 1

    # When Prometheus scrapes
    m = _scrape(daemon)
    labels = (("queue", "metered"), ("type", "m.job"))

    # Then the counters match what happened
    assert m[("ojs_job_enqueued_total", labels)] == 50
    assert m[("ojs_job_completed_total", labels)] == 45
    assert m[("ojs_job_failed_total", labels)] == 5
    assert m[("ojs_job_discarded_total", (("dead_letter", "false"), *labels))] == 5
    assert m[("ojs_job_duration_seconds_count", labels)] == 45
    assert m[("ojs_job_queue_time_seconds_count", labels)] == 50
    assert m[("ojs_queue_depth", (("queue", "metered"), ("state", "completed")))] == 45
    assert m[("ojs_queue_depth", (("queue", "metered"), ("state", "discarded")))] == 5
    assert m[("ojs_amqp_connections_active", ())] == 2
    assert m[("ojs_amqp_messages_published_total", (("exchange_kind", "direct"),))] >= 50
    assert m[("ojs_outbox_pending", ())] == 0


def test_scheduled_jobs_report_their_lateness(daemon: Daemon) -> None:
    url = f"{daemon.url}/ojs/v1"
    before_push = time.monotonic()
    status, _ = request(
        "POST", f"{url}/jobs",
        {"type": "m.later", "args": [], "options": {"queue": "later", "delay_until": "+PT1S"}},
    )  # fmt: skip
    assert status == 201
    fetched = request("POST", f"{url}/workers/fetch", {"queues": ["later"]})[1]["jobs"]
    if not fetched:
        fetched = request("POST", f"{url}/workers/fetch", {"queues": ["later"]})[1]["jobs"]
    assert len(fetched) == 1
    m = _scrape(daemon)
    # an ordering, not a latency budget: the job fired after it was due, and no later than
    # the test saw it (due 1 s after a moment at or after `before_push`; ms rounding aside)
    most = time.monotonic() - before_push - 1.0 + 0.002
    assert m[("ojs_schedule_lateness_seconds_count", (("queue", "later"),))] == 1
    assert 0 <= m[("ojs_schedule_lateness_seconds_sum", (("queue", "later"),))] <= most


def _wait_for(
    daemon: Daemon,
    ready: Callable[[dict[tuple[str, tuple[tuple[str, str], ...]], float]], bool],
    timeout: float = 10.0,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    deadline = time.monotonic() + timeout
    while True:
        m = _scrape(daemon)
        if ready(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def _broker_side_channels(prefix: str) -> int:
    """Channels RabbitMQ counts on the daemon's two connections (named after its prefix)."""
    out = subprocess.run(
        [*RABBITMQCTL, "-q", "list_connections", "client_properties", "channels"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sum(int(line.rsplit("\t", 1)[1]) for line in out.splitlines() if f"/{prefix}-" in line)


def test_metrics_report_channels_consumed_unacked_and_utilization(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--prefetch", "4")
    url = f"{daemon.url}/ojs/v1"
    unacked = "ojs_amqp_messages_unacked"
    held = (("holder", "buffered"), ("queue", "held"))
    leased = (("holder", "leased"), ("queue", "held"))
    timer = (("holder", "timer"), ("queue", ""))
    # Given three jobs, one of them fetched (leased) and two buffered for the next FETCH
    for i in range(3):
        body = {"type": "m.held", "args": [i], "options": {"queue": "held"}}
        assert request("POST", f"{url}/jobs", body)[0] == 201
    fetched = request("POST", f"{url}/workers/fetch", {"queues": ["held"], "count": 1})[1]["jobs"]
    assert len(fetched) == 1
    # and a job due in under two seconds, which the daemon holds from the due queue
    later = {"type": "m.held", "args": [9], "options": {"queue": "held", "delay_until": "+PT1.5S"}}
    assert request("POST", f"{url}/jobs", later)[0] == 201

    # When Prometheus scrapes
    m = _wait_for(daemon, lambda m: m.get((unacked, held)) == 2 and m.get((unacked, timer)) == 1)

    # Then what the daemon holds is reported, and how full its prefetch window is
    assert m[(unacked, leased)] == 1
    assert m[(unacked, held)] == 2
    assert m[(unacked, timer)] == 1
    assert m[("ojs_amqp_consumer_utilization", (("queue", "held"),))] == 0.75
    consumed = "ojs_amqp_messages_consumed_total"
    assert m[(consumed, (("queue_kind", "job"),))] == 3
    assert m[(consumed, (("queue_kind", "due"),))] == 1
    assert m[("ojs_amqp_channels_active", ())] == _broker_side_channels(daemon.prefix)
    assert m[("ojs_amqp_channels_active", ())] >= 8  # 2 publishing, 6+ consumers

    # When the leased job is acked and the timer fires (its job arrives in the buffer)
    request("POST", f"{url}/workers/ack", {"job_id": fetched[0]["id"]})
    m = _wait_for(daemon, lambda m: m.get((consumed, (("queue_kind", "job"),))) == 4)
    m = _wait_for(daemon, lambda m: m.get((unacked, held)) == 3)
    assert m[(unacked, leased)] == 0
    assert m[(unacked, held)] == 3
    assert m[(unacked, timer)] == 0
    assert m[("ojs_amqp_consumer_utilization", (("queue", "held"),))] == 0.75

    # And once everything is fetched and acked, nothing is held
    jobs = request("POST", f"{url}/workers/fetch", {"queues": ["held"], "count": 10})[1]["jobs"]
    for job in jobs:
        request("POST", f"{url}/workers/ack", {"job_id": job["id"]})
    m = _scrape(daemon)
    assert len(jobs) == 3
    assert m[(unacked, held)] == 0 and m[(unacked, leased)] == 0
    assert m[("ojs_amqp_consumer_utilization", (("queue", "held"),))] == 0
    assert m[(consumed, (("queue_kind", "job"),))] == 4
