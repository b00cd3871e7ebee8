"""The operator CLI (`ojs-amqp queues|job|push|dead-letters|health|cron|topology`) run as a
subprocess against a real daemon and broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pika
import pytest

from ojs_amqp.amqp.topology import LADDER_LEVELS, Topology
from tests.daemon import AMQP_URL, RABBITMQCTL, Daemon, delete_topology, free_port, request

pytestmark = pytest.mark.integration


def cli(*argv: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OJS_URL": url} if url else dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "ojs_amqp", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def ok_json(*argv: str, url: str | None = None) -> Any:
    done = cli(*argv, "--json", url=url)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def dead_letter(daemon: Daemon, queue: str) -> str:
    """A job that dead-letters on its single failed attempt; returns its id."""
    options = {"queue": queue, "retry": {"max_attempts": 1, "on_exhaustion": "dead_letter"}}
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/jobs", {"type": "cli.fail", "args": [], "options": options}
    )
    assert status == 201, body
    job_id = str(body["job"]["id"])
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": [queue], "worker_id": "w1"}
    )
    assert status == 200 and [j["id"] for j in body["jobs"]] == [job_id], body
    error = {"code": "boom", "message": "failed on purpose", "retryable": True}
    status, body = request(
        "POST",
        f"{daemon.url}/ojs/v1/workers/nack",
        {"job_id": job_id, "worker_id": "w1", "error": error},
    )
    assert status == 200 and body["state"] == "discarded", body
    return job_id


def test_push_show_queues_and_cancel(daemon: Daemon) -> None:
    queue = f"cli-{uuid.uuid4().hex[:6]}"
    # Given a job pushed from the shell
    pushed = ok_json(
        "push",
        "email.send",
        '["a@example.com"]',
        "--queue",
        queue,
        "--priority",
        "4",
        url=daemon.url,
    )
    job = pushed["job"]
    assert (job["type"], job["queue"], job["args"], job["priority"], job["state"]) == (
        "email.send",
        queue,
        ["a@example.com"],
        4,
        "available",
    )
    human = cli("push", "email.send", "--queue", queue, "--url", daemon.url)
    assert human.returncode == 0 and human.stdout.startswith("job ") and queue in human.stdout
    # Then `job show` finds it, as JSON and as a table
    assert ok_json("job", "show", job["id"], url=daemon.url)["job"]["id"] == job["id"]
    shown = cli("job", "show", job["id"], url=daemon.url)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines())
    assert fields["id"] == job["id"] and fields["state"] == "available"
    assert fields["args"] == '["a@example.com"]'
    # and `queues` counts both jobs as available
    rows = {q["name"]: q for q in ok_json("queues", url=daemon.url)["queues"]}
    assert rows[queue]["depth"]["available"] == 2 and rows[queue]["status"] == "active"
    table = cli("queues", url=daemon.url)
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    assert header.split()[:3] == ["QUEUE", "SCHEDULED", "AVAILABLE"]
    assert [ln.split()[:3] for ln in lines if ln.split()[0] == queue] == [[queue, "0", "2"]]
    # When it is cancelled
    cancelled = cli("job", "cancel", job["id"], url=daemon.url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"job {job['id']}: cancelled (queue {queue})"
    # Then it shows as cancelled, and a second cancel is the daemon's conflict error
    assert ok_json("job", "show", job["id"], url=daemon.url)["job"]["state"] == "cancelled"
    again = cli("job", "cancel", job["id"], url=daemon.url)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.startswith("error: conflict: "), again.stderr
    rows = {q["name"]: q for q in ok_json("queues", url=daemon.url)["queues"]}
    assert rows[queue]["depth"]["cancelled"] == 1 and rows[queue]["depth"]["available"] == 1


def test_dead_letters_list_retry_and_delete(daemon: Daemon) -> None:
    queue = f"cli-dl-{uuid.uuid4().hex[:6]}"
    # Given two dead letters in a queue
    first, second = dead_letter(daemon, queue), dead_letter(daemon, queue)
    # Then both are listed, as JSON and as a table
    listed = ok_json("dead-letters", "list", "--queue", queue, url=daemon.url)
    assert sorted(j["id"] for j in listed["jobs"]) == sorted([first, second])
    assert listed["total"] == 2
    assert (
        len(
            ok_json("dead-letters", "list", "--queue", queue, "--limit", "1", url=daemon.url)[
                "jobs"
            ]
        )
        == 1
    )
    table = cli("dead-letters", "list", "--queue", queue, url=daemon.url)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["ID", "TYPE", "QUEUE"]
    assert first in table.stdout and second in table.stdout
    assert "boom: failed on purpose" in table.stdout
    assert table.stdout.rstrip().endswith(f"2 of 2 dead letters in queue {queue}")
    # When one is retried
    retried = ok_json("dead-letters", "retry", first, url=daemon.url)
    assert retried["job"]["id"] == first and retried["job"]["state"] == "available"
    # Then a worker can fetch it again
    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": [queue], "worker_id": "w2"}
    )
    assert status == 200 and [j["id"] for j in body["jobs"]] == [first], body
    # When the other is deleted
    deleted = cli("dead-letters", "delete", second, url=daemon.url)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"deleted dead letter {second}"
    # Then none is left, and deleting it again is the daemon's not_found
    assert ok_json("dead-letters", "list", "--queue", queue, url=daemon.url)["jobs"] == []
    empty = cli("dead-letters", "list", "--queue", queue, url=daemon.url)
    assert empty.stdout.strip() == f"no dead letters in queue {queue}"
    gone = cli("dead-letters", "delete", second, url=daemon.url)
    assert gone.returncode == 1 and gone.stderr.startswith("error: not_found: "), gone.stderr


def test_purge_needs_yes_and_then_deletes_every_dead_letter_of_the_queue(daemon: Daemon) -> None:
    queue, other = f"cli-pg-{uuid.uuid4().hex[:6]}", f"cli-keep-{uuid.uuid4().hex[:6]}"
    ids = {dead_letter(daemon, queue) for _ in range(3)}
    kept = dead_letter(daemon, other)
    refused = cli("dead-letters", "purge", "--queue", queue, url=daemon.url)
    assert refused.returncode == 2 and "would delete 3 dead letters" in refused.stderr
    purged = ok_json("dead-letters", "purge", "--queue", queue, "--yes", url=daemon.url)
    assert purged["deleted"] == 3 and set(purged["job_ids"]) == ids
    assert ok_json("dead-letters", "list", "--queue", queue, url=daemon.url)["jobs"] == []
    left = ok_json("dead-letters", "list", url=daemon.url)["jobs"]
    assert [j["id"] for j in left] == [kept]


def test_rejected_list_shows_why_and_leaves_the_messages_then_purge_empties_it(
    daemon: Daemon,
) -> None:
    # Given two messages the native edge could not accept (no reply_to to answer)
    t = Topology(daemon.prefix)
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.basic_publish(t.submit_exchange, "cli", b"\xff not json", pika.BasicProperties())
        channel.basic_publish("", t.global_control_queue, b"{}",
                              pika.BasicProperties(type="ojs.control.nonsense"))  # fmt: skip
        deadline = time.monotonic() + 15
        while channel.queue_declare(t.rejected_queue, passive=True).method.message_count < 2:
            assert time.monotonic() < deadline, "the messages never reached ojs.rejected"
            time.sleep(0.05)
    finally:
        connection.close()
    broker = ("--prefix", daemon.prefix, "--amqp-url", AMQP_URL)
    # When an operator lists them, twice
    first = ok_json("rejected", "list", *broker)
    second = ok_json("rejected", "list", *broker)
    # Then each shows where it came from and why, and looking took nothing away
    assert first["messages"] == second["messages"] == 2
    by_source = {m["rejected_from"]: m for m in first["shown"]}  # sent to two queues: any order
    submission, control = by_source["cli"], by_source[t.global_control_queue]
    assert submission["error_code"] == control["error_code"] == "invalid_request"
    assert "not valid JSON" in submission["error_message"]
    assert submission["body"].endswith("not json") and submission["body_bytes"] == 10
    assert control["type"] == "ojs.control.nonsense"
    assert "unknown control message type" in control["error_message"]
    table = cli("rejected", "list", *broker)
    assert table.returncode == 0 and table.stdout.startswith(f"2 messages in {t.rejected_queue}")
    # And purging needs --yes, then empties the queue
    refused = cli("rejected", "purge", *broker)
    assert refused.returncode == 2 and "would delete 2 messages" in refused.stderr
    assert ok_json("rejected", "purge", "--yes", *broker)["purged"] == 2
    assert ok_json("rejected", "list", *broker) == {
        "queue": t.rejected_queue, "messages": 0, "shown": [],
    }  # fmt: skip


def test_health_and_cron_list(daemon: Daemon) -> None:
    health = cli("health", url=daemon.url)
    assert health.returncode == 0, health.stderr
    assert health.stdout.splitlines()[0].split() == ["status", "ok"]
    assert ok_json("health", url=daemon.url)["backend"]["status"] == "ok"
    cron = {
        "name": f"cli-{uuid.uuid4().hex[:6]}",
        "expression": "0 3 * * *",
        "job_template": {"type": "report.build", "args": [], "options": {"queue": "rep"}},
    }
    status, body = request("POST", f"{daemon.url}/ojs/v1/cron", cron)
    assert status == 201, body
    listed = ok_json("cron", "list", url=daemon.url)
    assert [c["name"] for c in listed["crons"]] == [cron["name"]]
    table = cli("cron", "list", url=daemon.url)
    assert table.returncode == 0, table.stderr
    row = table.stdout.splitlines()[1].split()
    assert row[0] == cron["name"] and "report.build" in row and "rep" in row


def test_no_daemon_at_the_url_is_exit_status_2() -> None:
    missing = cli("job", "show", "no-such-job", url=f"http://127.0.0.1:{free_port()}")
    assert missing.returncode == 2 and missing.stdout == ""
    assert "cannot reach the daemon at http://127.0.0.1:" in missing.stderr
    assert "connection refused" in missing.stderr


def test_an_unknown_job_is_reported_with_the_daemons_code(daemon: Daemon) -> None:
    done = cli("job", "show", "no-such-job", url=daemon.url)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "error: not_found: job no-such-job not found\n"


def test_topology_json_matches_the_topology_module() -> None:
    t = Topology("acme")
    out = ok_json("topology", "--prefix", "acme", "--queue", "mail", "--queue", "reports")
    assert out["prefix"] == "acme"
    exchanges = {e["name"]: e["type"] for e in out["exchanges"]}
    assert exchanges == {
        t.direct_exchange: "direct",
        t.dlx_exchange: "direct",
        t.delay_exchange: "direct",
        t.events_exchange: "topic",
        t.retry_exchange: "topic",
        t.submit_exchange: "fanout",
        t.workers_exchange: "topic",
    }
    queues = {q["name"]: q for q in out["queues"]}
    classic = t.control_queue_arguments()
    expected = {
        t.due_queue: t.due_queue_arguments(),
        t.leader_queue: t.leader_queue_arguments(),
        t.submit_queue: t.job_carrying_queue_arguments(),
        t.retry_intake_queue: t.job_carrying_queue_arguments(),
        t.global_control_queue: classic,
        t.rejected_queue: classic,
        **{t.ladder_queue(lv): t.ladder_queue_arguments(lv) for lv in range(LADDER_LEVELS)},
        **{t.job_queue(q): t.job_queue_arguments(q) for q in ("mail", "reports")},
        **{t.dead_letter_queue(q): t.dead_letter_queue_arguments() for q in ("mail", "reports")},
        **{t.control_queue(q): classic for q in ("mail", "reports")},
    }
    assert {name: q["arguments"] for name, q in queues.items()} == expected
    assert queues[t.job_queue("mail")]["bindings"] == [
        {"exchange": t.direct_exchange, "routing_key": "mail"}
    ]
    assert queues[t.dead_letter_queue("reports")]["bindings"] == [
        {"exchange": t.dlx_exchange, "routing_key": "reports"}
    ]
    human = cli("topology", "--prefix", "acme")
    assert human.returncode == 0 and "acme.ojs.queue.{queue}" in human.stdout


def _queues_on_broker(prefix: str) -> dict[str, str]:
    out = subprocess.run(
        [*RABBITMQCTL, "-q", "list_queues", "name", "type"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = (line.split() for line in out.splitlines())
    return {r[0]: r[1] for r in rows if len(r) == 2 and r[0].startswith(prefix + ".")}


def test_topology_declare_creates_the_queues_on_the_broker(broker: str) -> None:
    prefix = f"cli{uuid.uuid4().hex[:10]}"
    t = Topology(prefix)
    args = ("topology", "declare", "--amqp-url", AMQP_URL, "--prefix", prefix)
    try:
        # When the topology and two queues are declared
        done = cli(*args, "--queue", "mail,reports")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("declared 7 exchanges and 38 queues on ")
        assert "guest:***@" in done.stdout
        # Then every queue exists, with the type the topology module gives it
        per_queue = [*t.queues_of("mail"), *t.queues_of("reports")]
        specs = {s.name: s for s in [*t.fixed_queues(), *per_queue]}
        on_broker = _queues_on_broker(prefix)
        assert on_broker == {name: spec.arguments["x-queue-type"] for name, spec in specs.items()}
        # and declaring again is harmless
        again = ok_json(*args, "--queue", "mail")
        assert again["declared"] is True
        reports = {s.name for s in t.queues_of("reports")}
        assert {q["name"] for q in again["queues"]} == set(specs) - reports
    finally:
        delete_topology(prefix)
    assert _queues_on_broker(prefix) == {}


def test_topology_declare_without_a_broker_exits_2() -> None:
    done = cli(
        "topology",
        "declare",
        "--amqp-url",
        f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        "--prefix",
        "nobroker",
    )
    assert done.returncode == 2, done.stderr
    assert "cannot reach the broker at amqp://guest:***@127.0.0.1:" in done.stderr
