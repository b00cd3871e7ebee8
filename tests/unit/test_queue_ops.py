"""Queue pause state, the pause/resume answer, and the stats body and hourly figures."""

from __future__ import annotations

from ojs_amqp.core.queue_ops import (
    HOUR_MS,
    QueueState,
    ThroughputWindow,
    pause_response,
    stats_response,
)

T0 = 1_700_000_000_000


def test_pause_is_idempotent_and_resume_clears_it() -> None:
    state = QueueState("payments")
    assert not state.paused
    paused = state.pause(T0)
    assert paused.paused and paused.paused_at_ms == T0
    assert paused.pause(T0 + 5000).paused_at_ms == T0
    assert paused.resume() == state


def test_pause_and_resume_answers_have_the_suite_shape_and_the_binding_fields() -> None:
    paused = pause_response(QueueState("pause-test").pause(T0))
    assert paused["queue"]["name"] == "pause-test" and paused["queue"]["paused"] is True
    assert paused["status"] == "paused" and paused["paused_at"].endswith("Z")
    resumed = pause_response(QueueState("pause-test"))
    assert resumed == {"queue": {"name": "pause-test", "paused": False}, "status": "active"}


def test_stats_body() -> None:
    window = ThroughputWindow(started_ms=T0)
    window.finished(T0 + 1000, ok=True, duration_ms=200, wait_ms=50)
    window.finished(T0 + 2000, ok=True, duration_ms=400, wait_ms=150)
    window.finished(T0 + 3000, ok=False, duration_ms=10, wait_ms=10)
    now = T0 + 10_000
    body = stats_response(
        QueueState("stats-test"), {"available": 2, "completed": 1}, window.figures(now), now
    )
    assert body["queue"] == {
        "name": "stats-test", "available": 2, "active": 0, "scheduled": 0, "retryable": 0,
        "pending": 0, "completed": 1, "cancelled": 0, "discarded": 0, "paused": False,
    }  # fmt: skip
    assert body["status"] == "active" and body["computed_at"].endswith("Z")
    stats = body["stats"]
    assert (stats["completed_last_hour"], stats["failed_last_hour"]) == (2, 1)
    assert (stats["avg_duration_ms"], stats["avg_wait_ms"]) == (300, 100)
    assert stats["throughput_per_second"] == 0.2  # 2 completions in the 10 s since start


def test_the_window_forgets_what_is_older_than_an_hour_and_stays_small() -> None:
    window = ThroughputWindow(started_ms=T0)
    for second in range(0, 3 * 3600, 10):
        window.finished(T0 + second * 1000, ok=True, duration_ms=1, wait_ms=1)
    now = T0 + 3 * HOUR_MS
    figures = window.figures(now)
    assert 354 <= figures["completed_last_hour"] <= 360
    assert len(window._buckets) <= 61
    assert round(figures["throughput_per_second"], 1) == 0.1
    assert ThroughputWindow(started_ms=T0).figures(T0)["avg_duration_ms"] == 0
