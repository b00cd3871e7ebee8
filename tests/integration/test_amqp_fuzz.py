"""Hypothesis-generated messages against the daemon's AMQP edge (submissions, control queues,
binding retries).

Whatever a client publishes, the daemon answers a `reply_to` with either a job or an OJS error
(`error.code` and `error.message` strings), or, without `reply_to`, moves what it cannot accept
to ojs.rejected with the reason in its headers: never a crash, a hang or a silent drop. After
the run the daemon is healthy and still takes jobs. Messages go out in batches (one publish
burst, then the answers are collected) so CI can afford thousands of them.

`OJS_FUZZ_EXAMPLES` sets the batches per test (default 100 batches of 50 messages per test, about
10,000 messages over the edge in CI; raise it for a longer run).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pika.adapters.blocking_connection import BlockingChannel

from ojs_amqp.amqp import protocol
from ojs_amqp.amqp.topology import Topology
from tests.daemon import AMQP_URL, Daemon, request

pytestmark = pytest.mark.integration

BATCH = 50
FUZZ = settings(
    deadline=None,
    max_examples=int(os.environ.get("OJS_FUZZ_EXAMPLES", "100")),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REPLY_TO = "amq.rabbitmq.reply-to"

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
#: Envelope-shaped objects with each field sometimes right, sometimes of the wrong type.
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["email.send", "a.b", ""]) | json_values,
        "args": st.lists(json_scalars, max_size=3) | json_values,
        "queue": st.sampled_from(["fuzz", "Bad Queue", "control.x", ""]) | json_values,
        "id": st.just(str(uuid.uuid4())) | json_values,
        "priority": st.integers(min_value=-200, max_value=200) | json_values,
        "scheduled_at": st.sampled_from(["+PT1H", "2020-01-01T00:00:00Z", "soon"]) | json_values,
        "retry": st.fixed_dictionaries({}, optional={"max_attempts": json_values}) | json_values,
        "options": st.dictionaries(st.sampled_from(["queue", "priority", "pending"]), json_values)
        | json_values,
        "job_id": st.text(max_size=40) | json_values,
        "worker_id": json_values,
        "copy": json_values,
        "error": st.fixed_dictionaries({}, optional={"code": json_values}) | json_values,
        "queues": st.lists(st.sampled_from(["fuzz", "Bad", "dlx.x"]), max_size=3) | json_values,
        "job": json_values,
        "started_at": st.sampled_from(["2026-01-01T00:00:00Z", "yesterday"]) | json_values,
    },
)
bodies = (
    envelopes.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=300)
    | st.sampled_from([b"", b"{", b"[]", b"null", b'{"type": "x", "args": [}', b"\xff\xfe{}"])
)
header_values = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=20) | st.binary(max_size=20)
    | st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3)
    | st.decimals(min_value=-(10**6), max_value=10**6, places=3)  # pika's float-like type
    | st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1))
    | st.dictionaries(st.text(max_size=8), st.integers(-5, 5) | st.text(max_size=8), max_size=3)
)  # fmt: skip
headers = st.dictionaries(
    st.sampled_from(["x-ojs-copy", "x-ojs-job-id", "x-ojs-attempt", "x-ojs-error-code",
                     "x-ojs-state", "x-ojs-due-at", "x-whatever"]),
    header_values, max_size=4,
)  # fmt: skip
control_types = st.sampled_from(sorted(protocol.CONTROL_TYPES)) | st.text(max_size=20) | st.none()


class Edge:
    """One pika channel with a direct reply-to consumer (RabbitMQ allows one per channel)."""

    def __init__(self, daemon: Daemon, channel: BlockingChannel) -> None:
        self.daemon = daemon
        self.channel = channel
        self.t = Topology(daemon.prefix)
        self.answers: dict[str, dict[str, Any]] = {}
        channel.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)

    def _on_reply(self, _ch: Any, _method: Any, props: pika.BasicProperties, body: bytes) -> None:
        self.answers[props.correlation_id] = json.loads(body)

    def rpc_batch(
        self, route: tuple[str, str], messages: list[tuple[bytes, Any, Any]]
    ) -> list[dict[str, Any]]:
        """Publish a burst with reply_to, then collect one answer per message."""
        ids = []
        sent = {}
        for body, kind, hdrs in messages:
            correlation = uuid.uuid4().hex
            ids.append(correlation)
            sent[correlation] = (body, kind, hdrs)
            props = pika.BasicProperties(
                reply_to=REPLY_TO, correlation_id=correlation, type=kind, headers=hdrs,
                content_type="application/json",
            )  # fmt: skip
            self.channel.basic_publish(route[0], route[1], body, props)
        deadline = time.monotonic() + 10
        while not all(c in self.answers for c in ids):
            missing = [sent[c] for c in ids if c not in self.answers]
            assert time.monotonic() < deadline, f"unanswered: {missing}"
            self.channel.connection.process_data_events(time_limit=0.2)
        return [self.answers.pop(c) for c in ids]


@pytest.fixture(scope="module")
def edge(module_daemon: Daemon) -> Iterator[Edge]:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    yield Edge(module_daemon, connection.channel())
    connection.close()


STATES = {"scheduled", "available", "pending", "active", "completed", "retryable", "cancelled",
          "discarded"}  # fmt: skip


def _assert_answer(answer: dict[str, Any], daemon: Daemon | None = None) -> None:
    """An OJS error that is not the daemon's fault (the broker is up all along: no
    backend_error either), or a result; a job it names exists when read back over HTTP."""
    if "error" in answer:
        error = answer["error"]
        assert isinstance(error["code"], str) and error["code"]
        assert isinstance(error["message"], str)
        assert error["code"] not in ("internal_error", "backend_error"), answer
    elif "results" in answer:
        assert set(answer) == {"results"} and answer["results"], answer
        for result in answer["results"]:
            _assert_answer(result, daemon)
    else:
        assert set(answer) <= {"job", "queues"} and answer, answer
        if "job" in answer:
            assert answer["job"]["state"] in STATES, answer
            if daemon is not None:
                status, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{answer['job']['id']}")
                assert status == 200, (answer, body)


@FUZZ
@given(batch=st.lists(st.tuples(bodies, headers), min_size=BATCH, max_size=BATCH))
def test_every_submission_is_answered_with_a_job_or_an_ojs_error(
    edge: Edge, batch: list[tuple[bytes, Any]]
) -> None:
    answers = edge.rpc_batch(
        (edge.t.submit_exchange, "fuzz"), [(body, None, h) for body, h in batch]
    )
    for answer in answers:
        _assert_answer(answer, edge.daemon)


@FUZZ
@given(batch=st.lists(st.tuples(bodies, control_types, headers), min_size=BATCH, max_size=BATCH))
def test_every_control_message_is_answered_with_a_result_or_an_ojs_error(
    edge: Edge, batch: list[tuple[bytes, Any, Any]]
) -> None:
    for answer in edge.rpc_batch(("", edge.t.global_control_queue), batch):
        _assert_answer(answer, edge.daemon)


REPORT_QUEUE = "fuzzr"
REPORT_KINDS = [protocol.COMPLETED, protocol.FAILED, protocol.HEARTBEAT, protocol.CANCEL,
                protocol.INFO]  # fmt: skip


def _report(job_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A report or control body about one of `job_ids`, its other fields right or wrong."""
    return st.fixed_dictionaries(
        {"job_id": st.sampled_from(job_ids)},
        optional={
            "type": st.sampled_from(REPORT_KINDS) | json_values,
            "worker_id": st.sampled_from(["fz", "other"]) | json_values,
            "copy": st.integers(-1, 4) | json_values,
            "attempt": st.integers(-1, 4) | json_values,
            "started_at": st.sampled_from(["2026-01-01T00:00:00Z", "later"]) | json_values,
            "result": json_values,
            "error": st.fixed_dictionaries(
                {"code": st.sampled_from(["boom", ""]) | json_values},
                optional={"message": json_values, "retryable": json_values},
            )
            | json_values,
        },
    )


@settings(FUZZ, max_examples=max(1, FUZZ.max_examples // 5))
@given(data=st.data())
def test_reports_on_real_jobs_of_a_control_queue_are_answered_and_leave_valid_jobs(
    edge: Edge, data: st.DataObject
) -> None:
    """Reports and control messages (single and batched) naming real jobs, some leased,
    sent to `control.{q}`: each is answered, and every job reads back in a valid state."""
    url = edge.daemon.url
    ids = []
    for _ in range(6):
        status, body = request(
            "POST", f"{url}/ojs/v1/jobs",
            {"type": "fuzz.report", "args": [], "options": {"queue": REPORT_QUEUE}},
        )  # fmt: skip
        assert status == 201, body
        ids.append(body["job"]["id"])
    request(
        "POST", f"{url}/ojs/v1/workers/fetch",
        {"queues": [REPORT_QUEUE], "count": 3, "worker_id": "fz"},
    )  # fmt: skip
    singles = data.draw(
        st.lists(st.tuples(_report(ids), st.sampled_from(REPORT_KINDS)), min_size=20, max_size=20)
    )
    batches = data.draw(st.lists(st.lists(_report(ids), min_size=1, max_size=5), max_size=5))
    messages = [(json.dumps(body).encode(), kind, None) for body, kind in singles]
    messages += [(json.dumps({"reports": b}).encode(), protocol.BATCH, None) for b in batches]
    route = (edge.t.direct_exchange, f"control.{REPORT_QUEUE}")
    for answer in edge.rpc_batch(route, messages):
        _assert_answer(answer, edge.daemon)
    for job_id in ids:
        status, body = request("GET", f"{url}/ojs/v1/jobs/{job_id}")
        assert status == 200 and body["job"]["state"] in STATES, body
    # clean up what is still open, so the next example starts on an empty queue
    for job_id in ids:
        request("DELETE", f"{url}/ojs/v1/jobs/{job_id}")


def _drain(channel: BlockingChannel, queue: str, want: int) -> list[pika.BasicProperties]:
    got: list[pika.BasicProperties] = []
    deadline = time.monotonic() + 30
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} reached {queue}"
        method, props, _ = channel.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        got.append(props)
    return got


def test_unreadable_messages_without_reply_to_land_in_rejected_with_the_reason(
    edge: Edge,
) -> None:
    channel, t = edge.channel, edge.t
    channel.queue_purge(t.rejected_queue)
    sent = [
        (t.submit_exchange, "fuzz", b"\xff not json", None),
        ("", t.global_control_queue, b"{}", "ojs.control.nonsense"),
        ("", t.global_control_queue, b'{"job_id": 5}', protocol.INFO),
        (t.retry_exchange, "fuzz.notanumber", b"{}", None),
        (t.retry_exchange, "fuzz.100", b"[1, 2]", None),
    ]
    for exchange, key, body, kind in sent:
        channel.basic_publish(exchange, key, body, pika.BasicProperties(type=kind))
    rejected = _drain(channel, t.rejected_queue, len(sent))
    for props in rejected:
        assert props.headers[protocol.H_ERROR_CODE] in ("invalid_request", "not_found")
        assert props.headers[protocol.H_ERROR_MESSAGE]


def test_after_the_fuzzing_the_daemon_is_healthy_and_takes_jobs_over_amqp(edge: Edge) -> None:
    assert request("GET", f"{edge.daemon.url}/ojs/v1/health")[0] == 200
    (answer,) = edge.rpc_batch(
        (edge.t.submit_exchange, "fuzz"),
        [(json.dumps({"type": "still.ok", "args": []}).encode(), None, None)],
    )
    assert answer["job"]["state"] == "available"
