"""`ojs-amqp worker MODULE:ATTR`: load handlers from the user's code and run a Worker.

ATTR is a Worker (its handlers and settings; flags given on the command line win) or a
mapping of job type -> handler. The current directory is importable, as with other runners.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, NoReturn

from ojs_amqp.errors import OjsError, TopologyMismatch
from ojs_amqp.logs import configure
from ojs_amqp.sdk import use_fast_frame_reader
from ojs_amqp.sdk.worker import Worker

Runner = Callable[[Coroutine[Any, Any, None]], None]


def _usage_error(message: str) -> NoReturn:
    """Exit 2, like argparse does for a bad command line."""
    print(f"ojs-amqp worker: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_target(spec: str) -> Worker | Mapping[str, Any]:
    """Import `module:attr` (attr may be dotted) and check it is a Worker or a mapping."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        _usage_error(f"expected MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        _usage_error(f"cannot import {module_name!r}: {exc}")
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            _usage_error(f"{module_name!r} has no {attr!r}")
    if not isinstance(target, Worker | Mapping):
        _usage_error(
            f"{spec} is a {type(target).__name__}, not a Worker or a dict of job type -> handler"
        )
    return target


def worker_from_args(args: argparse.Namespace) -> Worker:
    target = load_target(args.target)
    changes: dict[str, Any] = {}
    for option, name in (
        ("amqp_url", "url"), ("prefix", "prefix"), ("queues", "queues"),
        ("concurrency", "concurrency"), ("grace_period", "grace_period"),
        ("heartbeat_interval", "heartbeat_interval"), ("prefetch", "prefetch"),
        ("report_batch_ms", "report_batch_ms"), ("report_batch_max", "report_batch_max"),
    ):  # fmt: skip
        value = getattr(args, option)
        if value is not None:
            changes[name] = value
    try:
        if isinstance(target, Worker):
            return target.configured(**changes)
        return Worker(handlers=target, **changes)
    except (ValueError, TypeError, OjsError) as exc:
        _usage_error(exc.message if isinstance(exc, OjsError) else str(exc))


def run_worker(args: argparse.Namespace, run: Runner) -> int:
    """0 after a graceful stop, 130 after an immediate one (second SIGINT)."""
    configure(args.log_level, args.log_format)
    use_fast_frame_reader()  # a process of its own: nothing else reads frames here
    worker = worker_from_args(args)
    try:
        run(worker.run())
    except TopologyMismatch as exc:
        print(f"ojs-amqp worker: {exc.message}", file=sys.stderr)
        return 1
    if worker.busy_threads:
        # Threads cannot be interrupted and the interpreter would wait for them at exit;
        # their deliveries are already back in the queue, so leave now.
        print(
            f"ojs-amqp worker: leaving {worker.busy_threads} handler threads running",
            file=sys.stderr,
        )
        sys.stderr.flush()
        os._exit(130)
    return 130 if worker.interrupted else 0
