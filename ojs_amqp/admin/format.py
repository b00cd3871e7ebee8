"""Pure helpers of the operator CLI: aligned tables, cells, /metrics parsing, request bodies."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ojs_amqp.admin.client import UsageError
from ojs_amqp.core.job import JobState

#: Column order of `ojs-amqp queues`: the eight OJS states, in lifecycle order.
STATES: tuple[str, ...] = tuple(s.value for s in JobState)
DEPTH_METRIC = "ojs_queue_depth"
EMPTY = "-"


def cell(value: Any) -> str:
    """One table cell: `-` for nothing, compact JSON for lists and objects."""
    if value is None or value == "":
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _numeric(values: Iterable[Any]) -> bool:
    seen = False
    for value in values:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        seen = True
    return seen


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns two spaces apart; numeric columns right-aligned; no trailing blanks."""
    texts = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in texts:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells for {len(headers)} columns")
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    right = [_numeric(row[i] for row in rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in texts)])


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """`key  value` lines with the values aligned, for one record."""
    items = [(k, cell(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in items)


def dump_json(payload: Any) -> str:
    return json.dumps(payload, indent=2, ensure_ascii=False)


# --- queues ---------------------------------------------------------------------------------


def parse_depths(metrics_text: str) -> dict[str, dict[str, int]]:
    """{queue: {state: count}} from the `ojs_queue_depth{queue,state}` gauge of /metrics."""
    depths: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != DEPTH_METRIC:
            continue
        for sample in family.samples:
            if sample.name != DEPTH_METRIC:
                continue
            queue, state = sample.labels.get("queue"), sample.labels.get("state")
            if queue is None or state is None:
                continue
            per_queue = depths.setdefault(queue, {})
            per_queue[state] = per_queue.get(state, 0) + int(sample.value)
    return depths


def queue_rows(
    queues: Sequence[Mapping[str, Any]], depths: Mapping[str, Mapping[str, int]]
) -> list[dict[str, Any]]:
    """Every queue the daemon lists or counts jobs in, sorted, with a depth for every state."""
    listed = {str(q["name"]): q for q in queues}
    out = []
    for name in sorted(set(listed) | set(depths)):
        known = listed.get(name, {})
        counts = depths.get(name, {})
        depth = {state: counts.get(state, 0) for state in STATES}
        depth.update({s: n for s, n in sorted(counts.items()) if s not in depth})
        out.append(
            {
                "name": name,
                "status": known.get("status"),
                "created_at": known.get("created_at"),
                "depth": depth,
            }
        )
    return out


def queues_table(rows: Sequence[Mapping[str, Any]]) -> str:
    states = list(STATES)
    for row in rows:
        states += [s for s in row["depth"] if s not in states]
    body = [[row["name"], *(row["depth"].get(s, 0) for s in states)] for row in rows]
    return table(["QUEUE", *(s.upper() for s in states)], body)


# --- jobs and dead letters ------------------------------------------------------------------


def error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        code, message = error.get("code") or error.get("type"), error.get("message")
        return ": ".join(str(p) for p in (code, message) if p) or cell(dict(error))
    return "" if error is None else cell(error)


def job_details(job: Mapping[str, Any]) -> str:
    return key_values((k, v) for k, v in job.items() if k != "specversion")


def dead_letters_table(jobs: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            j.get("id"),
            j.get("type"),
            j.get("queue"),
            j.get("attempt"),
            j.get("discarded_at") or j.get("completed_at"),
            truncate(error_text(j.get("error")), 60),
        ]
        for j in jobs
    ]
    return table(["ID", "TYPE", "QUEUE", "ATTEMPT", "DISCARDED AT", "ERROR"], rows)


def crons_table(crons: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for c in crons:
        template = c.get("job_template") or {}
        options = template.get("options") or {}
        rows.append(
            [
                c.get("name"),
                c.get("expression"),
                c.get("timezone"),
                template.get("type"),
                options.get("queue", "default"),
                c.get("enabled", True),
                c.get("next_run_at"),
                c.get("last_run_at"),
                c.get("run_count"),
            ]
        )
    headers = ["NAME", "EXPRESSION", "TIMEZONE", "JOB TYPE", "QUEUE", "ENABLED", "NEXT RUN",
               "LAST RUN", "RUNS"]  # fmt: skip
    return table(headers, rows)


def health_details(health: Mapping[str, Any]) -> str:
    backend = health.get("backend") or {}
    latency = backend.get("latency_ms")
    link = " ".join(
        str(p) for p in (backend.get("type"), backend.get("version"), backend.get("status")) if p
    )
    if latency is not None:
        link += f" (latency {latency} ms)"
    if backend.get("error"):
        link += f": {backend['error']}"
    pairs = [
        ("status", health.get("status")),
        ("version", health.get("version")),
        ("uptime", f"{health.get('uptime_seconds', 0)}s"),
        ("backend", link),
    ]
    return key_values(pairs)


# --- push -----------------------------------------------------------------------------------


def parse_json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None


def push_body(
    job_type: str,
    args_json: str | None = None,
    *,
    queue: str | None = None,
    priority: int | None = None,
    delay_until: str | None = None,
    meta_json: str | None = None,
    options_json: str | None = None,
) -> dict[str, Any]:
    """The POST /ojs/v1/jobs body. ARGS_JSON is a JSON array; any other JSON value becomes
    the single argument. The flags win over the same keys in --options."""
    args: Any = [] if args_json is None else parse_json_arg(args_json, "ARGS_JSON")
    if not isinstance(args, list):
        args = [args]
    options: dict[str, Any] = {}
    if options_json is not None:
        parsed = parse_json_arg(options_json, "--options")
        if not isinstance(parsed, dict):
            raise UsageError("--options must be a JSON object")
        options.update(parsed)
    for key, value in (("queue", queue), ("priority", priority), ("delay_until", delay_until)):
        if value is not None:
            options[key] = value
    body: dict[str, Any] = {"type": job_type, "args": args}
    if meta_json is not None:
        meta = parse_json_arg(meta_json, "--meta")
        if not isinstance(meta, dict):
            raise UsageError("--meta must be a JSON object")
        body["meta"] = meta
    if options:
        body["options"] = options
    return body
