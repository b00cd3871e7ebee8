"""The operator CLI's pure parts: tables, /metrics parsing, request bodies, argument parsing,
error mapping and the topology listing."""

from __future__ import annotations

import argparse

import pytest

from ojs_amqp import admin
from ojs_amqp.admin import format as fmt
from ojs_amqp.admin import topology as topo
from ojs_amqp.admin.client import ApiError, Unreachable, UsageError, error_from, job_path
from ojs_amqp.amqp.topology import LADDER_LEVELS, Topology
from ojs_amqp.logs import redact


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ojs-amqp")
    admin.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


# --- tables ---------------------------------------------------------------------------------


def test_a_table_aligns_text_left_and_numbers_right_two_spaces_apart() -> None:
    text = fmt.table(["QUEUE", "AVAILABLE"], [["mail", 3], ["reports", 120]])
    assert text.splitlines() == [
        "QUEUE    AVAILABLE",
        "mail             3",
        "reports        120",
    ]


def test_a_table_has_no_trailing_blanks_and_shows_missing_values_as_a_dash() -> None:
    text = fmt.table(["ID", "ERROR"], [["a", None], ["bb", "boom"]])
    assert text.splitlines() == ["ID  ERROR", "a   -", "bb  boom"]
    assert all(line == line.rstrip() for line in text.splitlines())


def test_a_table_of_no_rows_is_its_header() -> None:
    assert fmt.table(["A", "B"], []) == "A  B"


def test_a_row_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        fmt.table(["A", "B", "C"], [[1, 2]])


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        ("", "-"),
        (True, "yes"),
        (False, "no"),
        (3.0, "3"),
        (2.5, "2.5"),
        ({"a": [1, "é"]}, '{"a":[1,"é"]}'),
        ([], "[]"),
        ("x", "x"),
    ],
)
def test_cells_render_values_compactly(value: object, text: str) -> None:
    assert fmt.cell(value) == text


def test_truncate_keeps_short_text_and_marks_cut_text() -> None:
    assert fmt.truncate("short", 10) == "short"
    assert fmt.truncate("a" * 20, 10) == "a" * 9 + "…"


def test_key_values_align_the_values() -> None:
    assert fmt.key_values([("id", "j1"), ("max_attempts", 3)]).splitlines() == [
        "id            j1",
        "max_attempts  3",
    ]


def test_job_details_leave_out_the_spec_version() -> None:
    text = fmt.job_details({"specversion": "1.0", "id": "j1", "args": [1]})
    assert text.splitlines() == ["id    j1", "args  [1]"]


# --- queues ---------------------------------------------------------------------------------

METRICS = """\
# HELP ojs_queue_depth Jobs by queue and state
# TYPE ojs_queue_depth gauge
ojs_queue_depth{queue="mail",state="available"} 4.0
ojs_queue_depth{queue="mail",state="active"} 1.0
ojs_queue_depth{queue="reports",state="scheduled"} 2.0
# HELP ojs_outbox_pending Pushed jobs not yet confirmed by the broker
# TYPE ojs_outbox_pending gauge
ojs_outbox_pending 0.0
"""


def test_depths_come_from_the_queue_depth_gauge_only() -> None:
    assert fmt.parse_depths(METRICS) == {
        "mail": {"available": 4, "active": 1},
        "reports": {"scheduled": 2},
    }


def test_depths_of_metrics_without_the_gauge_are_empty() -> None:
    assert fmt.parse_depths("# TYPE other gauge\nother 1.0\n") == {}


def test_queue_rows_merge_listed_and_counted_queues_with_every_state() -> None:
    listed = [
        {"name": "mail", "status": "active", "created_at": "2026-01-01T00:00:00Z"},
        {"name": "idle", "status": "active", "created_at": "2026-01-02T00:00:00Z"},
    ]
    rows = fmt.queue_rows(listed, fmt.parse_depths(METRICS))
    assert [r["name"] for r in rows] == ["idle", "mail", "reports"]
    assert list(rows[0]["depth"]) == list(fmt.STATES)
    assert sum(rows[0]["depth"].values()) == 0
    assert rows[1]["depth"]["available"] == 4 and rows[1]["status"] == "active"
    assert rows[2]["status"] is None and rows[2]["depth"]["scheduled"] == 2


def test_the_queues_table_has_a_column_per_state_in_lifecycle_order() -> None:
    rows = fmt.queue_rows([], fmt.parse_depths(METRICS))
    lines = fmt.queues_table(rows).splitlines()
    assert lines[0].split() == ["QUEUE", *(s.upper() for s in fmt.STATES)]
    assert lines[1].split() == ["mail", "0", "4", "0", "1", "0", "0", "0", "0"]


def test_a_state_the_cli_does_not_know_gets_a_column_of_its_own() -> None:
    rows = fmt.queue_rows([], {"q": {"available": 1, "paused": 2}})
    assert fmt.queues_table(rows).splitlines()[0].split()[-1] == "PAUSED"


# --- dead letters, cron, health -------------------------------------------------------------


def test_the_dead_letters_table_shows_the_error_code_and_message() -> None:
    job = {
        "id": "j1",
        "type": "t",
        "queue": "q",
        "attempt": 1,
        "discarded_at": "2026-01-01T00:00:00Z",
        "error": {"code": "boom", "message": "no"},
    }
    lines = fmt.dead_letters_table([job]).splitlines()
    assert lines[0].split() == ["ID", "TYPE", "QUEUE", "ATTEMPT", "DISCARDED", "AT", "ERROR"]
    assert lines[1].split() == ["j1", "t", "q", "1", "2026-01-01T00:00:00Z", "boom:", "no"]


def test_error_text_copes_with_partial_errors() -> None:
    assert fmt.error_text({"message": "only a message"}) == "only a message"
    assert fmt.error_text({"type": "boom"}) == "boom"
    assert fmt.error_text(None) == ""


def test_the_cron_table_reads_the_job_template() -> None:
    cron = {
        "name": "nightly",
        "expression": "30 2 * * *",
        "timezone": "UTC",
        "enabled": True,
        "job_template": {"type": "report.build", "options": {"queue": "reports"}},
        "next_run_at": "2026-01-02T02:30:00Z",
        "last_run_at": None,
        "run_count": 0,
    }
    row = fmt.crons_table([cron]).splitlines()[1].split()
    assert row[:2] == ["nightly", "30"]
    assert row[6:] == ["UTC", "report.build", "reports", "yes", "2026-01-02T02:30:00Z", "-", "0"]


def test_health_details_summarise_the_backend() -> None:
    text = fmt.health_details(
        {
            "status": "degraded",
            "version": "0.1.0",
            "uptime_seconds": 5,
            "backend": {"type": "rabbitmq", "status": "disconnected", "error": "gone"},
        }
    )
    assert text.splitlines() == [
        "status   degraded",
        "version  0.1.0",
        "uptime   5s",
        "backend  rabbitmq disconnected: gone",
    ]


# --- push bodies ----------------------------------------------------------------------------


def test_a_push_body_has_the_type_args_and_only_the_options_given() -> None:
    assert fmt.push_body("email.send") == {"type": "email.send", "args": []}
    assert fmt.push_body(
        "email.send", '["a@x", 2]', queue="mail", priority=5, delay_until="+PT30S"
    ) == {
        "type": "email.send",
        "args": ["a@x", 2],
        "options": {"queue": "mail", "priority": 5, "delay_until": "+PT30S"},
    }


def test_a_push_argument_that_is_not_an_array_becomes_the_only_argument() -> None:
    assert fmt.push_body("t", '{"a": 1}')["args"] == [{"a": 1}]
    assert fmt.push_body("t", "7")["args"] == [7]


def test_push_flags_win_over_the_same_keys_in_options_and_meta_is_passed_on() -> None:
    body = fmt.push_body(
        "t",
        options_json='{"queue": "a", "retry": {"max_attempts": 1}}',
        queue="b",
        meta_json='{"k": "v"}',
    )
    assert body["options"] == {"queue": "b", "retry": {"max_attempts": 1}}
    assert body["meta"] == {"k": "v"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"args_json": "[1,"}, "ARGS_JSON is not valid JSON"),
        ({"options_json": "[]"}, "--options must be a JSON object"),
        ({"meta_json": "1"}, "--meta must be a JSON object"),
        ({"meta_json": "{"}, "--meta is not valid JSON"),
    ],
)
def test_bad_push_json_is_a_usage_error(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        fmt.push_body("t", **kwargs)


# --- argument parsing -----------------------------------------------------------------------


def test_daemon_commands_default_to_the_local_daemon_and_human_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OJS_URL", raising=False)
    args = parse("queues")
    assert (args.url, args.json, args.timeout) == ("http://127.0.0.1:8080", False, 30.0)
    assert args.admin_handler is admin.commands.queues


def test_the_url_comes_from_ojs_url_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OJS_URL", "http://ojs:9000")
    assert parse("health").url == "http://ojs:9000"
    assert parse("health", "--url", "http://other:1").url == "http://other:1"


def test_push_takes_type_optional_args_and_options() -> None:
    args = parse(
        "push",
        "email.send",
        '["a"]',
        "--queue",
        "mail",
        "--priority",
        "2",
        "--delay-until",
        "+PT1M",
        "--json",
    )
    assert (args.type, args.args_json, args.queue, args.priority, args.delay_until) == (
        "email.send",
        '["a"]',
        "mail",
        2,
        "+PT1M",
    )
    assert args.json and args.admin_handler is admin.commands.push
    assert parse("push", "t").args_json is None


def test_job_and_dead_letter_subcommands_take_an_id() -> None:
    assert parse("job", "show", "j1").id == "j1"
    assert parse("job", "cancel", "j1").admin_handler is admin.commands.job_cancel
    assert parse("dead-letters", "retry", "j2").admin_handler is admin.commands.dead_letters_retry
    assert parse("dlq", "delete", "j3").id == "j3"


def test_dead_letter_list_and_purge_options() -> None:
    args = parse("dead-letters", "list", "--queue", "q", "--limit", "5")
    assert (args.queue, args.limit) == ("q", 5)
    assert parse("dead-letters", "list").limit == 50
    assert parse("dead-letters", "purge").yes is False
    assert parse("dead-letters", "purge", "--yes", "--queue", "q").yes is True


def test_a_group_without_its_subcommand_is_an_argument_error() -> None:
    with pytest.raises(SystemExit) as exc:
        parse("job")
    assert exc.value.code == 2


def test_topology_options_and_declare(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OJS_PREFIX", raising=False)
    args = parse("topology")
    assert (args.prefix, args.queue, args.json) == ("", None, False)
    assert args.admin_handler is admin.commands.topology
    args = parse("topology", "--prefix", "p", "--queue", "a", "--queue", "b,c", "--json")
    assert (args.prefix, args.queue, args.json) == ("p", ["a", "b,c"], True)
    args = parse("topology", "declare", "--amqp-url", "amqp://h/", "--prefix", "p", "--queue", "a")
    assert args.admin_handler is admin.commands.topology_declare
    assert (args.amqp_url, args.prefix, args.queue, args.connect_attempts) == (
        "amqp://h/",
        "p",
        ["a"],
        1,
    )


def test_topology_options_before_declare_are_kept() -> None:
    args = parse("topology", "--prefix", "p", "--queue", "a", "declare")
    assert (args.prefix, args.queue) == ("p", ["a"])


# --- errors ---------------------------------------------------------------------------------


def test_an_ojs_error_envelope_becomes_an_api_error() -> None:
    raw = b'{"error": {"code": "not_found", "message": "job x not found", "retryable": false}}'
    err = error_from(404, raw, "Not Found")
    assert (err.code, err.message, err.status, err.exit_status) == (
        "not_found",
        "job x not found",
        404,
        1,
    )


def test_an_error_without_an_envelope_is_named_after_its_status() -> None:
    assert (error_from(502, b"<html>bad gateway</html>", "Bad Gateway").code) == "http_502"
    assert error_from(500, b"", "Internal").message == "Internal"


def test_ids_are_quoted_in_paths() -> None:
    assert job_path("a/b c") == "/ojs/v1/jobs/a%2Fb%20c"


def _failing(exc: Exception) -> argparse.Namespace:
    def handler(_: argparse.Namespace) -> int:
        raise exc

    return argparse.Namespace(admin_handler=handler)


def test_run_prints_daemon_errors_as_code_and_message_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert admin.run(_failing(ApiError("conflict", "already cancelled", 409))) == 1
    assert capsys.readouterr().err == "error: conflict: already cancelled\n"


def test_run_exits_2_when_the_daemon_is_unreachable_or_the_command_line_is_wrong(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert admin.run(_failing(Unreachable("cannot reach the daemon"))) == 2
    assert admin.run(_failing(UsageError("pass --yes"))) == 2
    assert capsys.readouterr().err == "ojs-amqp: cannot reach the daemon\nojs-amqp: pass --yes\n"


def test_run_exits_2_when_the_broker_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    args = _failing(ConnectionRefusedError("refused"))
    args.amqp_url = "amqp://guest:secret@h:5672/"
    assert admin.run(args) == 2
    err = capsys.readouterr().err
    assert "cannot reach the broker at amqp://guest:***@h:5672/" in err and "secret" not in err


# --- topology -------------------------------------------------------------------------------


def test_the_topology_lists_every_exchange_and_queue_the_daemon_declares() -> None:
    t = Topology("acme")
    d = topo.describe(t, ["mail"])
    assert d["prefix"] == "acme"
    assert [e["name"] for e in d["exchanges"]] == [
        t.direct_exchange,
        t.dlx_exchange,
        t.delay_exchange,
        t.events_exchange,
        t.retry_exchange,
        t.submit_exchange,
        t.workers_exchange,
    ]
    by_name = {q["name"]: q for q in d["queues"]}
    mail = {t.job_queue("mail"), t.dead_letter_queue("mail"), t.control_queue("mail")}
    assert set(by_name) == {*t.all_fixed_queues(), *mail}
    assert len(d["queues"]) == 6 + LADDER_LEVELS + 3
    assert by_name[t.global_control_queue]["bindings"] == []
    assert by_name[t.control_queue("mail")]["bindings"] == [
        {"exchange": t.direct_exchange, "routing_key": "control.mail"}
    ]
    assert by_name[t.job_queue("mail")]["arguments"] == t.job_queue_arguments("mail")
    assert by_name[t.job_queue("mail")]["bindings"] == [
        {"exchange": t.direct_exchange, "routing_key": "mail"}
    ]
    assert by_name[t.ladder_queue(7)]["arguments"] == t.ladder_queue_arguments(7)
    assert by_name[t.leader_queue]["arguments"] == t.leader_queue_arguments()
    assert not any(q.get("template") for q in d["queues"])


def test_without_queues_the_per_queue_entries_are_templates() -> None:
    d = topo.describe(Topology(), [])
    templates = [q for q in d["queues"] if q.get("template")]
    assert [q["name"] for q in templates] == [
        "ojs.queue.dlx.{queue}",
        "ojs.queue.control.{queue}",
        "ojs.queue.{queue}",
    ]
    assert "{queue} stands for each OJS queue" in topo.render(d)


def test_the_rendered_topology_shows_names_bindings_and_x_arguments() -> None:
    text = topo.render(topo.describe(Topology("p"), ["mail"]))
    line = next(ln for ln in text.splitlines() if ln.startswith("p.ojs.cron.leader "))
    assert "p.ojs.exchange.delay [cron.leader]" in line
    assert "x-single-active-consumer=true" in line and "x-message-ttl=5000" in line


def test_broker_urls_are_shown_without_their_password() -> None:
    assert redact("amqp://u:pw@h:5672/v") == "amqp://u:***@h:5672/v"
    assert redact("amqp://h/") == "amqp://h/"
