"""/metrics reports what actually happened."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.daemon import Daemon, request


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
    assert m[("ojs_schedule_lateness_seconds_count", (("queue", "later"),))] == 1
    assert m[("ojs_schedule_lateness_seconds_sum", (("queue", "later"),))] < 0.5
