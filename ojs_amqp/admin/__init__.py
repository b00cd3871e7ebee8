"""Operator subcommands of `ojs-amqp`: queues, jobs, dead letters, push, health, cron and the
RabbitMQ topology, and what `ojs.rejected` holds. All but `topology` and `rejected` talk to a
running daemon's HTTP API; see docs/cli.md.

`cli.py` calls `add_commands(sub)` to register them and `run(args)` to execute one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ojs_amqp.admin import commands
from ojs_amqp.admin.client import AdminError, ApiError
from ojs_amqp.amqp.failures import CONNECTION_ERRORS
from ojs_amqp.errors import OjsError
from ojs_amqp.logs import redact
from ojs_amqp.settings import Settings

Handler = Callable[[argparse.Namespace], int]
DEFAULT_URL = "http://127.0.0.1:8080"
#: Where `run` finds the handler of the chosen subcommand.
HANDLER = "admin_handler"


def _common(suppress: bool = False) -> argparse.ArgumentParser:
    """--url, --token-file, --timeout and --json, shared by every subcommand that talks to
    the daemon (`suppress`: no defaults, for a subcommand under one that has them already)."""
    parent = argparse.ArgumentParser(add_help=False)
    url = os.environ.get("OJS_URL", DEFAULT_URL)

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parent.add_argument(
        "--url", default=default(url),
        help=f"the daemon's HTTP address (env OJS_URL, default {url!r})",
    )  # fmt: skip
    parent.add_argument(
        "--token-file", default=default(os.environ.get("OJS_TOKEN_FILE")), metavar="PATH",
        help="file holding the bearer token to send (env OJS_TOKEN_FILE; or the token "
        "itself in OJS_TOKEN); needed when the daemon has --auth-tokens-file",
    )  # fmt: skip
    parent.add_argument(
        "--timeout", type=float, default=default(30.0),
        help="seconds to wait for each answer (default 30)",
    )  # fmt: skip
    parent.add_argument("--json", action="store_true", default=default(False),
                        help="print the JSON answer")  # fmt: skip
    return parent


def _leaf(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Handler,
    text: str,
    parents: list[argparse.ArgumentParser],
    aliases: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=text, description=text, parents=parents,
                            aliases=list(aliases))  # fmt: skip
    parser.set_defaults(**{HANDLER: handler})
    return parser


def _group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    text: str,
    aliases: tuple[str, ...] = (),
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = sub.add_parser(name, help=text, description=text, aliases=list(aliases))
    return parser.add_subparsers(dest=f"{name}_command", required=True)


def _topology_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--prefix/--queue/--json on `topology` and again on `topology declare`; on the latter
    they default to nothing so that `topology --prefix p declare` keeps `p`."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    _prefix_option(parser, suppress)
    parser.add_argument(
        "--queue",
        action="append",
        default=default(None),
        metavar="Q",
        help="an OJS queue whose queues to include; repeat it, or separate names with commas",
    )
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON")  # fmt: skip


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the operator subcommands on `ojs-amqp`'s subparsers."""
    common = [_common()]

    queues = _leaf(sub, "queues", commands.queues,
                   "list queues with their depth per job state, or delete one with "
                   "`queues delete`", common)  # fmt: skip
    queue_actions = queues.add_subparsers(dest="queues_command")
    removal = _leaf(queue_actions, "delete", commands.queues_delete,
                    "delete a queue: its RabbitMQ queues and its jobs in the store "
                    "(refused while it holds unfinished jobs, unless --force)",
                    [_common(suppress=True)])  # fmt: skip
    removal.add_argument("name", help="the OJS queue")
    removal.add_argument("--force", action="store_true",
                         help="cancel its unfinished jobs and delete it anyway")  # fmt: skip
    _leaf(sub, "health", commands.health,
          "the daemon's health; exits 1 unless it is ok", common)  # fmt: skip

    push = _leaf(sub, "push", commands.push, "enqueue a job", common)
    push.add_argument("type", help="job type, e.g. email.send")
    push.add_argument(
        "args_json",
        nargs="?",
        metavar="ARGS_JSON",
        help="job arguments: a JSON array (another JSON value becomes the only "
        "argument; default [])",
    )
    push.add_argument("--queue", help="target queue (default: the daemon's, 'default')")
    push.add_argument("--priority", type=int, help="higher is fetched first")
    push.add_argument(
        "--delay-until",
        metavar="T",
        help="RFC 3339 time or +ISO-8601 duration (e.g. +PT30S) to run at",
    )
    push.add_argument("--meta", metavar="JSON", help="job meta: a JSON object")
    push.add_argument("--options", metavar="JSON",
                      help="further job options as a JSON object, e.g. "
                      "'{\"retry\":{\"max_attempts\":1}}'")  # fmt: skip

    job = _group(sub, "job", "look up or cancel a job")
    _leaf(job, "show", commands.job_show, "show a job", common).add_argument("id")
    _leaf(job, "cancel", commands.job_cancel, "cancel a job", common).add_argument("id")

    dead = _group(sub, "dead-letters", "list, retry, delete and purge dead letters",
                  aliases=("dead-letter", "dlq"))  # fmt: skip
    listing = _leaf(dead, "list", commands.dead_letters_list, "list dead letters", common)
    listing.add_argument("--queue", help="only this queue's")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    _leaf(dead, "retry", commands.dead_letters_retry,
          "put a dead letter back on its queue", common).add_argument("id")  # fmt: skip
    _leaf(dead, "delete", commands.dead_letters_delete,
          "delete a dead letter", common).add_argument("id")  # fmt: skip
    purge = _leaf(dead, "purge", commands.dead_letters_purge, "delete every dead letter", common)
    purge.add_argument("--queue", help="only this queue's")
    purge.add_argument("--yes", action="store_true", help="really delete them")

    cron = _group(sub, "cron", "cron schedules")
    _leaf(cron, "list", commands.cron_list, "list cron schedules", common)

    topology = _leaf(sub, "topology", commands.topology,
                     "print every RabbitMQ name and x-argument the daemon uses (no broker "
                     "needed), or declare them with `topology declare`", [])  # fmt: skip
    _topology_options(topology, suppress=False)
    actions = topology.add_subparsers(dest="topology_command")
    declare = _leaf(actions, "declare", commands.topology_declare,
                    "declare the exchanges and queues on the broker (idempotent)", [])  # fmt: skip
    _topology_options(declare, suppress=True)
    _broker_url_option(declare)
    declare.add_argument(
        "--connect-attempts",
        type=int,
        default=1,
        help="broker connection attempts before giving up (default 1)",
    )

    refused = _group(sub, "rejected", "list or purge what the daemon moved to ojs.rejected "
                     "(read from the broker, not the daemon)")  # fmt: skip
    shown = _leaf(refused, "list", commands.rejected_list,
                  "show the oldest messages and why they were refused; they stay in the queue",
                  [])  # fmt: skip
    shown.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    emptied = _leaf(refused, "purge", commands.rejected_purge,
                    "delete every message in ojs.rejected", [])  # fmt: skip
    emptied.add_argument("--yes", action="store_true", help="really delete them")
    for leaf in (shown, emptied):
        _prefix_option(leaf)
        _broker_url_option(leaf)
        leaf.add_argument("--json", action="store_true", help="print JSON")


def _prefix_option(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    prefix = os.environ.get("OJS_PREFIX", Settings().prefix) or ""
    parser.add_argument(
        "--prefix",
        default=argparse.SUPPRESS if suppress else prefix,
        help=f"prefix of every RabbitMQ name (env OJS_PREFIX, default {prefix!r})",
    )


def _broker_url_option(parser: argparse.ArgumentParser) -> None:
    amqp_url = os.environ.get("OJS_AMQP_URL", Settings().amqp_url)
    parser.add_argument(
        "--amqp-url", default=amqp_url, help="RabbitMQ URL (env OJS_AMQP_URL, default the daemon's)"
    )


def handles(args: argparse.Namespace) -> bool:
    return hasattr(args, HANDLER)


def run(args: argparse.Namespace) -> int:
    """Run the chosen subcommand: daemon errors exit 1, unreachable daemon or broker exit 2."""
    handler: Handler = getattr(args, HANDLER)
    try:
        return handler(args)
    except ApiError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return exc.exit_status
    except AdminError as exc:
        print(f"ojs-amqp: {exc}", file=sys.stderr)
        return exc.exit_status
    except OjsError as exc:  # from the broker during `topology declare`
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `ojs-amqp queues | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except CONNECTION_ERRORS as exc:
        if not hasattr(args, "amqp_url"):
            raise
        url = redact(args.amqp_url)
        print(f"ojs-amqp: cannot reach the broker at {url}: {exc}", file=sys.stderr)
        return 2
