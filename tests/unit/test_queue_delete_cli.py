"""Deleting a queue: only admin tokens may, and `ojs-amqp queues delete` parses as documented."""

from __future__ import annotations

from ojs_amqp.admin import HANDLER, commands
from ojs_amqp.cli import _parser
from ojs_amqp.http.auth import required_scopes


def test_only_admin_tokens_may_delete_a_queue() -> None:
    assert required_scopes("DELETE", "/ojs/v1/queues/mail") == {"admin"}
    assert "producer" in required_scopes("GET", "/ojs/v1/queues")


def test_queues_delete_takes_a_name_and_force_and_keeps_the_shared_options() -> None:
    args = _parser().parse_args(["queues", "delete", "mail"])
    assert getattr(args, HANDLER) is commands.queues_delete
    assert (args.name, args.force, args.json, args.timeout) == ("mail", False, False, 30.0)
    args = _parser().parse_args(["queues", "--url", "http://a:1", "delete", "mail", "--force"])
    assert (args.url, args.force) == ("http://a:1", True)
    args = _parser().parse_args(["queues", "delete", "mail", "--json", "--url", "http://b:2"])
    assert (args.url, args.json) == ("http://b:2", True)


def test_queues_alone_still_lists() -> None:
    args = _parser().parse_args(["queues", "--json"])
    assert getattr(args, HANDLER) is commands.queues and args.json
