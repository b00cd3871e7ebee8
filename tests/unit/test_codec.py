import orjson

from ojs_amqp.amqp.codec import CONTENT_TYPE, amqp_priority, encode, read_ref
from ojs_amqp.core.job import Job, JobState


def _job(**changes: object) -> Job:
    base = {"id": "019a0000-0000-7000-8000-000000000001", "type": "email.send",
            "queue": "mail", "args": [1], "state": JobState.AVAILABLE,
            "created_at_ms": 1_700_000_000_000}  # fmt: skip
    base.update(changes)
    return Job(**base)  # type: ignore[arg-type]


def test_priority_buckets_keep_the_named_levels_apart_and_ordered() -> None:
    named = [amqp_priority(p) for p in (-10, 0, 10)]
    assert named == sorted(named) and len(set(named)) == 3
    assert len({amqp_priority(p) for p in (1, 2, 3)}) == 3
    assert amqp_priority(-100) == 0 and amqp_priority(100) == 9
    values = [amqp_priority(p) for p in range(-100, 101)]
    assert values == sorted(values)


def test_a_message_carries_the_binding_properties_and_our_headers() -> None:
    job = _job(attempt=1, meta={"traceparent": "00-abc-def-01", "correlation_id": "c1"})
    message = encode(job, due_at_ms=123)
    props = message.properties
    assert props.content_type == CONTENT_TYPE
    assert props.delivery_mode == 2
    assert props.message_id == job.id
    assert props.message_type == "email.send"
    assert props.timestamp is not None and props.timestamp.timestamp() == 1_700_000_000
    headers = props.headers
    assert headers is not None
    assert headers["x-ojs-queue"] == "mail"
    assert headers["x-ojs-attempt"] == 2  # the attempt this delivery will be
    assert headers["x-ojs-trace-id"] == "00-abc-def-01"
    assert headers["x-ojs-copy"] == job.copy
    assert headers["x-ojs-due-at"] == 123
    assert props.correlation_id == "c1"
    assert orjson.loads(message.body)["id"] == job.id


def test_read_ref_falls_back_to_message_id_and_ignores_mistyped_headers() -> None:
    ref = read_ref({"x-ojs-copy": "7", "x-ojs-due-at": True}, "mid")
    assert ref.job_id == "mid" and ref.copy is None and ref.due_at_ms is None
    ref = read_ref({"x-ojs-job-id": b"abc", "x-ojs-copy": 3}, None)
    assert ref.job_id == "abc" and ref.copy == 3


def test_the_broker_return_count_is_read_from_x_delivery_count() -> None:
    from ojs_amqp.amqp.codec import delivery_count

    assert delivery_count(None) == delivery_count({}) == 0
    assert delivery_count({"x-delivery-count": 21}) == 21
    assert (
        delivery_count({"x-delivery-count": "3"}) == delivery_count({"x-delivery-count": -1}) == 0
    )


def test_the_death_reason_is_the_latest_death_on_3_10_and_4_x() -> None:
    from ojs_amqp.amqp.codec import DELIVERY_LIMIT, death_reason

    # As measured: 3.10 sends x-death and x-first-death-*; 4.0.5 adds x-last-death-*
    on_310 = {"x-death": [{"count": 1, "reason": "delivery_limit", "queue": "q"}],
              "x-first-death-reason": "delivery_limit"}  # fmt: skip
    assert death_reason(on_310) == DELIVERY_LIMIT
    assert death_reason({"x-last-death-reason": b"delivery_limit"}) == DELIVERY_LIMIT
    later = {"x-death": [{"reason": "rejected"}, {"reason": "delivery_limit"}],
             "x-first-death-reason": "delivery_limit"}  # fmt: skip
    assert death_reason(later) == "rejected"
    assert death_reason({"x-death": "junk"}) is None and death_reason(None) is None
