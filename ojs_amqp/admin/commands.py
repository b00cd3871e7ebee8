"""Handlers of the operator subcommands; each prints its answer and returns the exit status."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any
from urllib.parse import quote

from ojs_amqp.admin import format as fmt
from ojs_amqp.admin import rejected
from ojs_amqp.admin import topology as topo
from ojs_amqp.admin.client import (
    BASE,
    ApiError,
    Client,
    UsageError,
    dead_letter_path,
    job_path,
    read_token,
)
from ojs_amqp.amqp.topology import Topology
from ojs_amqp.logs import redact

#: The daemon's page size limit.
PAGE = 200


def client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.timeout, read_token(args.token_file))


def emit(args: argparse.Namespace, payload: Any, human: str) -> None:
    print(fmt.dump_json(payload) if args.json else human)


def queues(args: argparse.Namespace) -> int:
    c = client(args)
    listed: list[dict[str, Any]] = []
    while True:
        body = c.call("GET", f"{BASE}/queues", query={"limit": PAGE, "offset": len(listed)})
        page = body.get("queues") or []
        listed += page
        if not page or not (body.get("pagination") or {}).get("has_more"):
            break
    rows = fmt.queue_rows(listed, fmt.parse_depths(c.text("/metrics")))
    emit(args, {"queues": rows}, fmt.queues_table(rows) if rows else "no queues")
    return 0


def queues_delete(args: argparse.Namespace) -> int:
    query = {"force": "true"} if args.force else None
    body = client(args).call("DELETE", f"{BASE}/queues/{quote(args.name, safe='')}", query=query)
    human = (
        f"deleted queue {args.name}: {len(body.get('broker_queues') or [])} RabbitMQ queues, "
        f"{body.get('jobs_deleted', 0)} jobs ({body.get('jobs_cancelled', 0)} of them "
        "unfinished and cancelled first)"
    )
    emit(args, body, human)
    return 0


def job_show(args: argparse.Namespace) -> int:
    body = client(args).call("GET", job_path(args.id))
    emit(args, body, fmt.job_details(body["job"]))
    return 0


def job_cancel(args: argparse.Namespace) -> int:
    body = client(args).call("DELETE", job_path(args.id))
    job = body["job"]
    emit(args, body, f"job {job['id']}: {job.get('state')} (queue {job.get('queue')})")
    return 0


def push(args: argparse.Namespace) -> int:
    request = fmt.push_body(
        args.type, args.args_json, queue=args.queue, priority=args.priority,
        delay_until=args.delay_until, meta_json=args.meta, options_json=args.options,
    )  # fmt: skip
    body = client(args).call("POST", f"{BASE}/jobs", request)
    job = body["job"]
    emit(args, body, f"job {job['id']}: {job.get('state')} (queue {job.get('queue')})")
    return 0


def _dead_letters(c: Client, queue: str | None, limit: int) -> tuple[list[dict[str, Any]], int]:
    jobs: list[dict[str, Any]] = []
    total = 0
    while len(jobs) < limit:
        query = {"queue": queue, "limit": min(PAGE, limit - len(jobs)), "offset": len(jobs)}
        body = c.call("GET", f"{BASE}/dead-letter", query=query)
        page = body.get("jobs") or []
        pagination = body.get("pagination") or {}
        total = int(pagination.get("total", len(jobs) + len(page)))
        jobs += page
        if not page or not pagination.get("has_more"):
            break
    return jobs, total


def dead_letters_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    jobs, total = _dead_letters(client(args), args.queue, args.limit)
    where = f" in queue {args.queue}" if args.queue else ""
    if jobs:
        human = f"{fmt.dead_letters_table(jobs)}\n\n{len(jobs)} of {total} dead letters{where}"
    else:
        human = f"no dead letters{where}"
    emit(args, {"jobs": jobs, "total": total}, human)
    return 0


def dead_letters_retry(args: argparse.Namespace) -> int:
    body = client(args).call("POST", dead_letter_path(args.id, "retry"))
    job = body["job"]
    emit(args, body, f"job {job['id']}: {job.get('state')} (queue {job.get('queue')})")
    return 0


def dead_letters_delete(args: argparse.Namespace) -> int:
    body = client(args).call("DELETE", dead_letter_path(args.id))
    emit(args, body, f"deleted dead letter {args.id}")
    return 0


def dead_letters_purge(args: argparse.Namespace) -> int:
    c = client(args)
    where = f" in queue {args.queue}" if args.queue else ""
    if not args.yes:
        _, total = _dead_letters(c, args.queue, 1)
        raise UsageError(f"would delete {total} dead letters{where}; pass --yes to do it")
    deleted: list[str] = []
    seen: set[str] = set()
    while True:
        page, _ = _dead_letters(c, args.queue, PAGE)
        fresh = [str(j["id"]) for j in page if str(j["id"]) not in seen]
        if not fresh:
            break
        for job_id in fresh:
            seen.add(job_id)
            try:
                c.call("DELETE", dead_letter_path(job_id))
            except ApiError as exc:
                if exc.code != "not_found":  # retried or deleted meanwhile: nothing to do
                    raise
            else:
                deleted.append(job_id)
    emit(args, {"deleted": len(deleted), "job_ids": deleted},
         f"deleted {len(deleted)} dead letters{where}")  # fmt: skip
    return 0


def health(args: argparse.Namespace) -> int:
    body = client(args).call("GET", f"{BASE}/health", accept=(503,))
    emit(args, body, fmt.health_details(body))
    return 0 if body.get("status") == "ok" else 1


def cron_list(args: argparse.Namespace) -> int:
    api, crons = client(args), list[Any]()
    while True:  # the list is paged (200 at most a page)
        body = api.call("GET", f"{BASE}/cron", query={"limit": 200, "offset": len(crons)})
        page = body.get("crons") or []
        crons += page
        if not page or not (body.get("pagination") or {}).get("has_more"):
            break
    emit(args, {"crons": crons}, fmt.crons_table(crons) if crons else "no cron schedules")
    return 0


def _queue_names(raw: list[str] | None) -> list[str]:
    names = [n.strip() for value in raw or [] for n in value.split(",")]
    if any(not n for n in names):
        raise UsageError("--queue names must not be empty")
    return list(dict.fromkeys(names))


def topology(args: argparse.Namespace) -> int:
    queues = _queue_names(args.queue)
    description = topo.describe(Topology(args.prefix or ""), queues)
    emit(args, description, topo.render(description))
    return 0


def topology_declare(args: argparse.Namespace) -> int:
    queues = _queue_names(args.queue)
    t = Topology(args.prefix or "")
    topo.run_declare(args.amqp_url, t, queues, args.connect_attempts)
    description = topo.describe(t, queues)
    if not queues:
        description["queues"] = [q for q in description["queues"] if not q.get("template")]
    n_ex, n_q = len(description["exchanges"]), len(description["queues"])
    human = f"declared {n_ex} exchanges and {n_q} queues on {redact(args.amqp_url)}"
    emit(args, {"declared": True, **description}, human)
    return 0


def rejected_list(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise UsageError("--limit must not be negative")
    listing = asyncio.run(rejected.peek(args.amqp_url, Topology(args.prefix or ""), args.limit))
    emit(args, listing, rejected.render(listing))
    return 0


def rejected_purge(args: argparse.Namespace) -> int:
    t = Topology(args.prefix or "")
    if not args.yes:
        depth = asyncio.run(rejected.peek(args.amqp_url, t, 0))["messages"]
        raise UsageError(
            f"would delete {depth} messages from {t.rejected_queue}; pass --yes to do it"
        )
    result = asyncio.run(rejected.purge(args.amqp_url, t))
    emit(args, result, f"deleted {result['purged']} messages from {result['queue']}")
    return 0
