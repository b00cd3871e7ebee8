"""The admin API's pure parts: throughput history, pagination and filters, redaction."""

from __future__ import annotations

import pytest

from ojs_amqp.engine.events import Event
from ojs_amqp.errors import InvalidRequest
from ojs_amqp.http.admin import params
from ojs_amqp.http.admin.history import MINUTE_MS, StatsHistory, percentile
from ojs_amqp.http.admin.system import redacted
from ojs_amqp.http.server import Request
from ojs_amqp.settings import Settings, Token

T0 = 1_800_000_000_000 - 1_800_000_000_000 % MINUTE_MS


def _event(kind: str, at: int, queue: str = "q", **data: object) -> Event:
    return Event(1, kind, at, queue, "t", dict(data))


def test_history_counts_per_minute_and_queue_with_empty_periods_kept() -> None:
    history = StatsHistory()
    history(_event("job.enqueued", T0 + 5))
    history(_event("job.completed", T0 + 10, duration_ms=40))
    history(_event("job.completed", T0 + 2 * MINUTE_MS, duration_ms=80))
    history(_event("job.failed", T0 + 2 * MINUTE_MS, queue="other"))
    history(_event("job.started", T0 + 20))  # not counted
    points = history.series(MINUTE_MS, T0, T0 + 3 * MINUTE_MS, None)
    assert [(p["enqueued"], p["processed"], p["failed"]) for p in points] == [
        (1, 1, 0), (0, 0, 0), (0, 1, 1)]  # fmt: skip
    assert points[0]["latency_p50_ms"] == 40 and points[1]["latency_p99_ms"] is None
    assert history.total(T0, T0 + 3 * MINUTE_MS, "other").failed == 1
    assert history.total(T0, T0 + 3 * MINUTE_MS, "q").failed == 0


def test_percentiles() -> None:
    assert percentile([], 0.5) is None
    assert percentile(list(range(1, 101)), 0.5) == 51
    assert percentile(list(range(1, 101)), 0.99) == 100


def _request(query: str) -> Request:
    return Request("GET", "/x", query, {}, b"")


@pytest.mark.parametrize(
    ("query", "limit", "offset"),
    [("", 20, 0), ("page=3&per_page=10", 10, 20), ("limit=5&offset=7", 5, 7),
     ("per_page=500", 100, 0), ("limit=500", 100, 0)],
)  # fmt: skip
def test_both_kinds_of_pagination(query: str, limit: int, offset: int) -> None:
    page = params.page_of(_request(query))
    assert (page.limit, page.offset) == (limit, offset)


def test_pagination_answers_in_both_vocabularies() -> None:
    assert params.Page(10, 20).wire(31) == {"total": 31, "page": 3, "per_page": 10,
                                           "limit": 10, "offset": 20, "has_more": True}  # fmt: skip


def test_filters_parse_or_name_the_bad_field() -> None:
    query = params.job_query({"queue": "q", "state": "available,active", "type": "mail.*",
                              "since": "2026-01-01T00:00:00Z"})  # fmt: skip
    assert query.states == ("available", "active") and query.type_prefix == "mail."
    assert query.type is None and query.since_ms == 1_767_225_600_000
    for bad, field in [({"state": "done"}, "state"), ({"since": "now"}, "since"),
                       ({"colour": "red"}, "colour"), ({"queue": 3}, "queue")]:  # fmt: skip
        with pytest.raises(InvalidRequest) as caught:
            params.job_query(bad)
        assert caught.value.details["field"] == field
    with pytest.raises(InvalidRequest):
        params.confirmed({"confirm": "true"}, "purge")


def test_configuration_is_shown_without_secrets() -> None:
    settings = Settings(amqp_url="amqp://ops:hunter2hunter2@rabbit:5671/vh",
                        auth_tokens=(Token("admin", "s" * 20),))  # fmt: skip
    shown = redacted(settings)
    assert shown["amqp_url"] == "amqp://ops:***@rabbit:5671/vh"
    assert shown["auth_tokens"] == [{"scope": "admin", "secret": "***"}]
    assert "hunter2" not in str(shown) and "s" * 20 not in str(shown)


class _Queries:
    """Stands in for the store's admin queries: counts and a count of matches."""

    def __init__(self, matches: int) -> None:
        self.matches, self.count_calls, self.counts_calls = matches, 0, 0

    async def counts(self, queue: str | None = None) -> dict[tuple[str, str], int]:
        self.counts_calls += 1
        return {("a", "available"): 3, ("a", "completed"): 4, ("b", "available"): 5}

    async def count(self, query: object, at_most: int | None = None) -> int:
        self.count_calls += 1
        return self.matches if at_most is None else min(self.matches, at_most)


def test_list_totals_come_from_cached_counts_or_a_capped_count() -> None:
    from asyncio import run
    from typing import Any, cast

    from ojs_amqp.http.admin.context import MAX_COUNT, AdminContext
    from ojs_amqp.store.admin_queries import JobQuery

    fake = _Queries(matches=50_000)
    ctx = AdminContext(cast(Any, None), cast(Any, None), Settings())
    ctx._queries, ctx._looked_up = cast(Any, fake), True
    assert run(ctx.total(JobQuery())) == (12, False)
    assert run(ctx.total(JobQuery(queue="a"))) == (7, False)
    assert run(ctx.total(JobQuery(states=("available",)))) == (8, False)
    assert fake.counts_calls == 1 and fake.count_calls == 0  # one read serves all three
    assert run(ctx.total(JobQuery(type="t"))) == (MAX_COUNT, True)  # more matched than counted
    fake.matches = 42
    assert run(ctx.total(JobQuery(type="t"))) == (42, False)
    ctx.forget_counts()
    run(ctx.total(JobQuery()))
    assert fake.counts_calls == 2
