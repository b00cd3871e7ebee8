"""Hypothesis-generated malformed requests against a running daemon.

Whatever a client sends, the daemon must answer in time with a 4xx carrying an OJS error body
(`error.code` a non-empty string, `error.message` a string) and the exact OJS content type:
never a 5xx, never a hang. After the run the daemon must still be healthy and accept jobs.

Requests are made with http.client so bytes and headers are exactly what the test says.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.daemon import Daemon, request

OJS_CONTENT_TYPE = "application/openjobspec+json"
MAX_BODY_BYTES = 10 * 1024 * 1024  # the daemon's default limit
TIMEOUT_S = 10.0
#: Examples per test: 1,200 x 10 generated tests is over 10,000 requests in CI; set
#: OJS_FUZZ_HTTP_EXAMPLES higher for a longer run.
FUZZ = settings(
    deadline=None,
    max_examples=int(os.environ.get("OJS_FUZZ_HTTP_EXAMPLES", "1200")),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

POST_ENDPOINTS = [
    "/ojs/v1/jobs",
    "/ojs/v1/workers/fetch",
    "/ojs/v1/workers/ack",
    "/ojs/v1/workers/nack",
    "/ojs/v1/workers/heartbeat",
]


@pytest.fixture(scope="module")
def daemon(module_daemon: Daemon) -> Daemon:
    """One daemon for the whole module (the fuzz tests only need it to be up)."""
    return module_daemon


# --- raw HTTP --------------------------------------------------------------------------------


class Answer:
    def __init__(self, status: int, content_type: str | None, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body

    def __repr__(self) -> str:
        return f"<{self.status} {self.content_type} {self.body[:300]!r}>"


def send(
    d: Daemon,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str | None = "application/json",
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> Answer:
    """One request on a fresh connection; fails the test on a hang or a dropped connection."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=TIMEOUT_S)
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    try:
        try:
            if chunked:
                conn.request(method, path, body=iter([body or b""]), headers=all_headers,
                             encode_chunked=True)  # fmt: skip
            else:
                conn.request(method, path, body=body, headers=all_headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading a huge body to its end
        try:
            resp = conn.getresponse()
            return Answer(resp.status, resp.getheader("Content-Type"), resp.read())
        except TimeoutError:
            pytest.fail(f"{method} {path}: no answer within {TIMEOUT_S}s")
        except (ConnectionError, http.client.HTTPException) as exc:
            pytest.fail(f"{method} {path}: connection dropped without an answer ({exc!r})")
    finally:
        conn.close()


def assert_ojs_error(answer: Answer, *statuses: int) -> dict[str, Any]:
    """A 4xx (one of `statuses` if given) with an OJS error body and content type."""
    assert 400 <= answer.status < 500, answer
    if statuses:
        assert answer.status in statuses, answer
    assert answer.content_type == OJS_CONTENT_TYPE, answer
    body = json.loads(answer.body)
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"], answer
    assert isinstance(error["message"], str), answer
    return dict(error)


def assert_no_server_error(answer: Answer) -> None:
    """Accepted (2xx) or refused with an OJS error: never a 5xx."""
    if answer.status >= 300:
        assert_ojs_error(answer)
    else:
        assert answer.content_type == OJS_CONTENT_TYPE, answer


def post_json(d: Daemon, path: str, payload: Any) -> Answer:
    return send(d, "POST", path, json.dumps(payload).encode())


# --- strategies ------------------------------------------------------------------------------

json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
    allow_infinity=False) | st.text(max_size=20)  # fmt: skip
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
strings = st.text(max_size=30)
ints = st.integers(-(2**70), 2**70)
floats = st.floats(allow_nan=False, allow_infinity=False)
lists = st.lists(json_leaves, max_size=3)
dicts = st.dictionaries(st.text(max_size=8), json_leaves, max_size=3)

#: JSON values of every kind but the one(s) a field accepts. `null` is left out: an optional
#: field may legitimately be null.
WRONG = {
    "str": st.booleans() | ints | floats | lists | dicts,
    "int": st.booleans() | strings | floats.filter(lambda f: f != int(f)) | lists | dicts,
    "number": st.booleans() | strings | lists | dicts,
    "bool": ints | floats | strings | lists | dicts,
    "list": st.booleans() | ints | floats | strings | dicts,
    "dict": st.booleans() | ints | floats | strings | lists,
    # ISO 8601 text or a number of milliseconds
    "duration": st.booleans() | lists | dicts,
    # heartbeat active_jobs: a list of ids (HTTP binding) or a count (worker protocol)
    "list_or_count": st.booleans() | floats.filter(lambda f: f != int(f)) | strings | dicts,
}

VALID_RETRY = {"max_attempts": 3, "initial_interval": "PT1S", "backoff_coefficient": 2.0,
               "jitter": True, "on_exhaustion": "discard"}  # fmt: skip
VALID_JOB = {
    "type": "fuzz.job",
    "args": [1],
    "meta": {"k": "v"},
    "options": {"queue": "fuzz", "priority": 0, "retry": VALID_RETRY, "timeout_ms": 60_000,
                "visibility_timeout_ms": 30_000, "tags": ["a"], "pending": False},
}  # fmt: skip

#: field path -> the kind it accepts, per endpoint.
JOB_FIELDS: dict[tuple[str, ...], str] = {
    ("type",): "str",
    ("args",): "list",
    ("id",): "str",
    ("meta",): "dict",
    ("options",): "dict",
    ("options", "queue"): "str",
    ("options", "priority"): "int",
    ("options", "timeout_ms"): "int",
    ("options", "visibility_timeout_ms"): "int",
    ("options", "delay_until"): "str",
    ("options", "scheduled_at"): "str",
    ("options", "expires_at"): "str",
    ("options", "pending"): "bool",
    ("options", "tags"): "list",
    ("options", "retry"): "dict",
    ("options", "retry", "max_attempts"): "int",
    ("options", "retry", "initial_interval"): "duration",
    ("options", "retry", "max_interval"): "duration",
    ("options", "retry", "backoff_coefficient"): "number",
    ("options", "retry", "jitter"): "bool",
    ("options", "retry", "on_exhaustion"): "str",
    ("options", "retry", "non_retryable_errors"): "list",
}
WORKER_FIELDS: dict[str, tuple[dict[str, Any], dict[tuple[str, ...], str]]] = {
    "/ojs/v1/workers/fetch": (
        {"queues": ["fuzz"], "count": 1, "worker_id": "w", "visibility_timeout_ms": 5000},
        {("queues",): "list", ("count",): "int", ("worker_id",): "str",
         ("visibility_timeout_ms",): "int"},
    ),
    "/ojs/v1/workers/ack": (
        {"job_id": "j", "worker_id": "w", "result": 1},
        {("job_id",): "str", ("worker_id",): "str"},
    ),
    "/ojs/v1/workers/nack": (
        {"job_id": "j", "worker_id": "w", "requeue": False,
         "error": {"code": "c", "message": "m", "retryable": True, "details": {}}},
        {("job_id",): "str", ("worker_id",): "str", ("requeue",): "bool", ("error",): "dict",
         ("error", "code"): "str", ("error", "message"): "str", ("error", "retryable"): "bool",
         ("error", "details"): "dict"},
    ),
    "/ojs/v1/workers/heartbeat": (
        {"worker_id": "w", "active_jobs": ["j"], "visibility_timeout_ms": 5000},
        {("worker_id",): "str", ("active_jobs",): "list_or_count",
         ("visibility_timeout_ms",): "int"},
    ),
}  # fmt: skip
# Elements of lists that must hold strings.
WORKER_FIELDS["/ojs/v1/workers/fetch"][1][("queues", 0)] = "str"  # type: ignore[index]
WORKER_FIELDS["/ojs/v1/workers/heartbeat"][1][("active_jobs", 0)] = "str"  # type: ignore[index]
JOB_FIELDS[("options", "tags", 0)] = "str"  # type: ignore[index]


def with_value(base: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(base))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


@st.composite
def mistyped(
    draw: st.DrawFn, base: dict[str, Any], fields: dict[tuple[Any, ...], str]
) -> dict[str, Any]:
    path = draw(st.sampled_from(sorted(fields, key=str)))
    return with_value(base, path, draw(WRONG[fields[path]]))


def nested(depth: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


# --- tests -----------------------------------------------------------------------------------


@FUZZ
@given(path=st.sampled_from(POST_ENDPOINTS), body=st.binary(max_size=2000))
def test_arbitrary_bytes_posted_to_any_endpoint_answer_an_ojs_4xx(
    daemon: Daemon, path: str, body: bytes
) -> None:
    with contextlib.suppress(ValueError):
        assume(not isinstance(json.loads(body), dict))  # JSON objects: see the typed tests
    assert_ojs_error(send(daemon, "POST", path, body), 400)


@FUZZ
@given(
    path=st.sampled_from(POST_ENDPOINTS),
    text=st.sampled_from(['{"type":', "[1,2", '{"a":1}}', "nul", '{"type":"x",}', "'x'", "{}{}"])
    | st.text(max_size=200),
)
def test_malformed_json_text_answers_an_ojs_400(daemon: Daemon, path: str, text: str) -> None:
    with contextlib.suppress(ValueError):
        assume(not isinstance(json.loads(text), dict))
    error = assert_ojs_error(send(daemon, "POST", path, text.encode()), 400)
    assert error["code"] in ("invalid_payload", "invalid_request")


@FUZZ
@given(body=mistyped(VALID_JOB, JOB_FIELDS))
def test_a_job_with_a_mistyped_field_is_refused_with_an_ojs_4xx(
    daemon: Daemon, body: dict[str, Any]
) -> None:
    assert_ojs_error(post_json(daemon, "/ojs/v1/jobs", body), 400, 422)


@FUZZ
@given(data=st.data(), path=st.sampled_from(sorted(WORKER_FIELDS)))
def test_a_worker_request_with_a_mistyped_field_is_refused_with_an_ojs_4xx(
    daemon: Daemon, data: st.DataObject, path: str
) -> None:
    base, fields = WORKER_FIELDS[path]
    body = data.draw(mistyped(base, fields))
    assert_ojs_error(post_json(daemon, path, body), 400, 422)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backoff_coefficient", "2"),
        ("backoff_coefficient", True),
        ("initial_interval", True),
        ("max_interval", False),
    ],
)
def test_numeric_retry_fields_refuse_booleans_and_numeric_strings(
    daemon: Daemon, field: str, value: Any
) -> None:
    # A JSON boolean or string is not a number, even where pydantic's lax mode would coerce it.
    body = with_value(VALID_JOB, ("options", "retry", field), value)
    assert_ojs_error(post_json(daemon, "/ojs/v1/jobs", body), 400, 422)


@FUZZ
@given(
    field=st.sampled_from(
        [("options", "priority"), ("options", "timeout_ms"), ("options", "visibility_timeout_ms"),
         ("options", "retry", "max_attempts"), ("options", "retry", "initial_interval"),
         ("options", "retry", "max_interval")]
    ),
    value=ints,
)  # fmt: skip
def test_extreme_integers_in_a_job_never_cause_a_server_error(
    daemon: Daemon, field: tuple[str, ...], value: int
) -> None:
    assert_no_server_error(post_json(daemon, "/ojs/v1/jobs", with_value(VALID_JOB, field, value)))


RFC3339_ISH = (
    r"\A[0-9]{1,6}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})\Z"
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (("options", "retry", "max_attempts"), 2**63),
        (("options", "retry", "initial_interval"), 2**64),
        (("options", "retry", "max_interval"), 2**64),
        (("options", "delay_until"), "+PT9007199254740992S"),
        (("options", "expires_at"), "+PT9007199254740992S"),
    ],
    ids=["max_attempts-2^63", "initial_interval-2^64", "max_interval-2^64", "delay_until-2^53s",
         "expires_at-2^53s"],
)  # fmt: skip
def test_well_typed_values_beyond_what_the_daemon_can_store_are_refused_not_a_500(
    daemon: Daemon, field: tuple[str, ...], value: Any
) -> None:
    # Values past int64 / the datetime range must be a 4xx, not an unhandled encode error.
    assert_ojs_error(post_json(daemon, "/ojs/v1/jobs", with_value(VALID_JOB, field, value)))


@FUZZ
@given(
    field=st.sampled_from(
        [("type",), ("id",), ("options", "queue"), ("options", "delay_until"),
         ("options", "expires_at"), ("options", "retry", "initial_interval"),
         ("options", "retry", "on_exhaustion")]
    ),
    value=strings
    | st.from_regex(r"\A\+?P(T[0-9]{1,25}(\.[0-9]{0,9})?[HMS])?\Z")
    | st.from_regex(RFC3339_ISH),
)  # fmt: skip
def test_odd_strings_in_a_job_never_cause_a_server_error(
    daemon: Daemon, field: tuple[str, ...], value: str
) -> None:
    assert_no_server_error(post_json(daemon, "/ojs/v1/jobs", with_value(VALID_JOB, field, value)))


def nested_text(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "1" + "]" * depth
    return '{"k":' * depth + "1" + "}" * depth


@FUZZ
@given(
    depth=st.integers(1, 5000),
    kind=st.sampled_from(["list", "dict"]),
    where=st.sampled_from(["args", "meta", "body"]),
)
def test_deeply_nested_json_never_causes_a_server_error(
    daemon: Daemon, depth: int, kind: str, where: str
) -> None:
    deep = nested_text(depth, kind)
    text = {
        "body": deep,
        "args": '{"type":"fuzz.job","options":{"queue":"deep"},"args":[' + deep + "]}",
        "meta": '{"type":"fuzz.job","options":{"queue":"deep"},"args":[],"meta":{"d":'
        + deep
        + "}}",
    }[where]
    assert_no_server_error(send(daemon, "POST", "/ojs/v1/jobs", text.encode()))


def test_json_nested_5000_levels_deep_is_refused_with_an_ojs_400(daemon: Daemon) -> None:
    for path in POST_ENDPOINTS:
        body = ('{"type":"fuzz.job","args":' + "[" * 5000 + "]" * 5000 + "}").encode()
        assert_ojs_error(send(daemon, "POST", path, body), 400)


def test_a_job_nested_just_beyond_what_the_store_can_encode_is_refused_not_a_500(
    daemon: Daemon,
) -> None:
    # orjson parses 1024 levels but serialises only 254, so 300 levels passes the parser
    answer = post_json(
        daemon, "/ojs/v1/jobs", with_value(VALID_JOB, ("args",), [nested(300, "list")])
    )
    assert_ojs_error(answer, 400, 413, 422)


def test_an_ack_whose_result_is_nested_too_deep_is_refused_and_the_job_can_still_be_acked(
    daemon: Daemon,
) -> None:
    # Given an active job
    job = {"type": "fuzz.job", "args": [], "options": {"queue": "deep-ack"}}
    status, _ = request("POST", f"{daemon.url}/ojs/v1/jobs", job)
    assert status == 201
    status, body = request("POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": ["deep-ack"]})
    job_id = body["jobs"][0]["id"]
    # When its worker acks it with a result nested 300 levels deep
    answer = post_json(
        daemon, "/ojs/v1/workers/ack", {"job_id": job_id, "result": nested(300, "list")}
    )
    # Then the ack is refused with an OJS 4xx, and a plain ack still completes the job
    assert_ojs_error(answer)
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/workers/ack", {"job_id": job_id, "result": 1}
    )
    assert status == 200 and body["state"] == "completed", body


INVALID_UTF8 = [b"\xff", b"\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xed\xa0\x80",
                b"\xf0\x28\x8c\xbc", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80"]  # fmt: skip


@FUZZ
@given(
    path=st.sampled_from(POST_ENDPOINTS),
    field=st.sampled_from(["type", "job_id", "worker_id", "queue"]),
    prefix=st.text(max_size=10).map(lambda s: json.dumps(s)[1:-1].encode()),
    bad=st.sampled_from(INVALID_UTF8),
)
def test_invalid_utf8_inside_json_strings_answers_an_ojs_400(
    daemon: Daemon, path: str, field: str, prefix: bytes, bad: bytes
) -> None:
    body = b'{"' + field.encode() + b'":"' + prefix + bad + b'","args":[],"queues":["q"]}'
    assert_ojs_error(send(daemon, "POST", path, body), 400)


ACCEPTED_MEDIA = ("application/openjobspec+json", "application/json")


@FUZZ
@given(
    content_type=st.sampled_from(
        ["text/plain", "text/plain; charset=utf-8", "multipart/form-data; boundary=xyz",
         "application/x-www-form-urlencoded", "application/xml", "text/json", "application/jsonx",
         "application/openjobspec+json; charset=utf-8", "APPLICATION/JSON"]
    )
    | st.from_regex(r"\A[a-z]{1,12}/[a-z0-9.+\-]{1,20}(; ?[a-z]{1,8}=[a-z0-9\-]{1,10})?\Z"),
    path=st.sampled_from(POST_ENDPOINTS),
)  # fmt: skip
def test_a_wrong_content_type_is_refused_with_an_ojs_400(
    daemon: Daemon, content_type: str, path: str
) -> None:
    media = content_type.split(";", 1)[0].strip().lower()
    assume(media not in ACCEPTED_MEDIA)
    body = json.dumps({"type": "fuzz.job", "args": [], "queues": ["q"], "job_id": "j"}).encode()
    error = assert_ojs_error(send(daemon, "POST", path, body, content_type=content_type), 400)
    assert error["code"] == "invalid_payload"


def test_a_multipart_form_upload_is_refused_with_an_ojs_400(daemon: Daemon) -> None:
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\nfuzz.job\r\n"
            b"--xyz--\r\n")  # fmt: skip
    answer = send(daemon, "POST", "/ojs/v1/jobs", body, "multipart/form-data; boundary=xyz")
    assert_ojs_error(answer, 400)


@pytest.mark.parametrize("path", ["/ojs/v1/jobs", "/ojs/v1/workers/fetch"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_10_mib_limit_is_refused_with_an_ojs_413(
    daemon: Daemon, path: str, chunked: bool
) -> None:
    body = b'{"type":"fuzz.job","args":["' + b"x" * MAX_BODY_BYTES + b'"]}'
    error = assert_ojs_error(send(daemon, "POST", path, body, chunked=chunked), 413)
    assert error["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/ojs/v1/jobs"), ("GET", "/ojs/v1/workers/fetch"), ("PATCH", "/ojs/v1/workers/ack"),
     ("DELETE", "/ojs/v1/workers/nack"), ("POST", "/ojs/v1/health")],
)  # fmt: skip
def test_a_wrong_method_is_refused_with_an_ojs_405(daemon: Daemon, method: str, path: str) -> None:
    assert_ojs_error(send(daemon, method, path, b"{}"), 405)


@FUZZ
@given(job_id=st.text(min_size=1, max_size=60).filter(lambda s: "/" not in s))
def test_any_unknown_job_id_answers_an_ojs_404(daemon: Daemon, job_id: str) -> None:
    answer = send(daemon, "GET", "/ojs/v1/jobs/" + quote(job_id, safe=""), content_type=None)
    assert_ojs_error(answer, 404)


def test_after_the_fuzzing_the_daemon_is_healthy_and_still_takes_jobs(daemon: Daemon) -> None:
    # Runs last in this module (pytest keeps file order).
    assert daemon.process is not None and daemon.process.poll() is None, "the daemon died"
    status, body = request("GET", f"{daemon.url}/ojs/v1/health")
    assert status == 200 and body["status"] == "ok"
    job = {"type": "fuzz.after", "args": [1], "options": {"queue": "after"}}
    status, body = request("POST", f"{daemon.url}/ojs/v1/jobs", job)
    assert status == 201
    job_id = body["job"]["id"]
    status, body = request("POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": ["after"]})
    assert status == 200 and [j["id"] for j in body["jobs"]] == [job_id]
    status, body = request("POST", f"{daemon.url}/ojs/v1/workers/ack", {"job_id": job_id})
    assert status == 200 and body["state"] == "completed"
