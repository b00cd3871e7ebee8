"""wrk as bench_http.py's load generator, and the check of its figures against the daemon's store.

wrk (Debian's package) runs a Lua script for a fixed number of seconds; the script's `done`
hook prints one `WRK_RESULT {json}` line with every answer counted per status. A phase counts
only 2xx answers, and fails loudly when any answer was not 2xx, when wrk saw socket errors, or
when what the daemon's store holds disagrees with what wrk counted. wrk stops mid-request, so
up to one request per connection was in flight at the end: its effect (a job pushed, jobs
handed to a fetch whose answer was dropped) is allowed, bounded by those counts, and settled
(acked) untimed before the check.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from _common import BenchError

HERE = Path(__file__).resolve().parent
PUSH_SCRIPT = HERE / "wrk_push.lua"
FETCH_SCRIPT = HERE / "wrk_fetch_ack.lua"
RESULT_MARK = "WRK_RESULT "
#: An empty FETCH waits up to the daemon's fetch wait (1 s); wrk's default timeout is 2 s.
WRK_TIMEOUT = "10s"

#: POST path, JSON body -> (status, answer JSON or None): acks settled after wrk stopped.
PostStatus = Callable[[str, Any], Awaitable[tuple[int, Any]]]


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


async def run_wrk(
    base: str, script: Path, seconds: int, connections: int, threads: int, *script_args: str
) -> dict[str, Any]:
    """Run wrk once; its WRK_RESULT record (BenchError if wrk failed or printed none)."""
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={WRK_TIMEOUT}",
        "-s",
        str(script),
        base,
        "--",
        *script_args,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(seconds + 60):
        out, err = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk exited {proc.returncode}: {err.decode(errors='replace')}{text}")
    for line in text.splitlines():
        if line.startswith(RESULT_MARK):
            record: dict[str, Any] = orjson.loads(line[len(RESULT_MARK) :])
            return record
    raise BenchError(f"wrk printed no {RESULT_MARK.strip()} line:\n{text}")


# --- what the daemon recorded --------------------------------------------------------------


class StoreReader:
    """Read-only counts from the daemon's SQLite store (the bench daemon's own file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def states(self, queue: str) -> dict[str, int]:
        rows = self._query(
            "SELECT state, COUNT(*) FROM jobs WHERE queue = ? GROUP BY state", (queue,)
        )
        return {str(state): int(n) for state, n in rows}

    def active_ids(self, queue: str) -> list[str]:
        rows = self._query("SELECT id FROM jobs WHERE queue = ? AND state = 'active'", (queue,))
        return [str(row[0]) for row in rows]


def _check_clean(kind: str, record: dict[str, Any], statuses: dict[str, int]) -> None:
    bad = {s: n for s, n in statuses.items() if not 200 <= int(s) <= 299}
    if bad:
        raise BenchError(f"wrk {kind}: non-2xx answers {bad} (all answers {statuses})")
    errors = {k: n for k, n in record["socket_errors"].items() if n}
    if errors:
        raise BenchError(f"wrk {kind}: socket errors {errors}")


@dataclass
class WrkOutcome:
    """A timed wrk phase: the 2xx work it did, its seconds, and what the check found."""

    count: int
    seconds: float
    note: str


def check_push(record: dict[str, Any], store: StoreReader, queue: str) -> WrkOutcome:
    """Jobs answered 201 = jobs in the store, give or take the pushes in flight at wrk's stop."""
    statuses: dict[str, int] = record["statuses"]
    _check_clean("push", record, statuses)
    created = statuses.get("201", 0)
    stored = sum(store.states(queue).values())
    extra = stored - created
    if not 0 <= extra <= record["in_flight"]:
        raise BenchError(
            f"wrk push on {queue}: {created} answered 201 but the store holds {stored} jobs "
            f"({record['in_flight']} pushes were in flight at wrk's stop)"
        )
    note = f"201 x{created}, store {stored} (+{extra} of {record['in_flight']} in flight)"
    return WrkOutcome(created, record["duration_us"] / 1e6, note)


async def settle_fetch(
    record: dict[str, Any], store: StoreReader, queue: str, completed_before: int, post: PostStatus
) -> WrkOutcome:
    """Ack, untimed, what wrk left fetched but unacked, then check the store: every fetched job
    acked exactly once, none left active."""
    statuses: dict[str, dict[str, int]] = record["statuses"]
    for kind in ("fetch", "ack"):
        _check_clean(kind, record, statuses[kind])
    if record["empty_fetches"]:
        raise BenchError(
            f"wrk fetch on {queue}: {record['empty_fetches']} fetches came back empty: the queue "
            "ran dry inside the window, which under-measures; push longer or fetch shorter"
        )
    unacked: list[str] = record["unacked"]
    if record["fetched"] != record["acked"] + len(unacked):
        raise BenchError(
            f"wrk fetch on {queue}: fetched {record['fetched']} != acked {record['acked']} + "
            f"{len(unacked)} left unacked"
        )
    late_conflicts = 0
    for job_id in unacked:
        status, _ = await post("/ojs/v1/workers/ack", {"job_id": job_id})
        late_conflicts += status != 200
    if late_conflicts > record["acks_in_flight"]:
        raise BenchError(
            f"wrk fetch on {queue}: {late_conflicts} late acks refused, but only "
            f"{record['acks_in_flight']} acks were in flight at wrk's stop"
        )
    # Jobs handed to a fetch whose answer wrk dropped at its stop: at most `count` each.
    dropped = store.active_ids(queue)
    if len(dropped) > record["fetches_in_flight"] * record["count"]:
        raise BenchError(
            f"wrk fetch on {queue}: {len(dropped)} jobs left active, more than the "
            f"{record['fetches_in_flight']} fetches in flight at wrk's stop could hold"
        )
    for job_id in dropped:
        status, answer = await post("/ojs/v1/workers/ack", {"job_id": job_id})
        if status != 200:
            raise BenchError(f"ack of {job_id} left active answered {status}: {answer}")
    states = store.states(queue)
    completed = states.get("completed", 0) - completed_before
    expected = record["acked"] + len(unacked) + len(dropped)
    if states.get("active", 0) or completed != expected:
        raise BenchError(
            f"wrk fetch on {queue}: store {states} (completed +{completed}), expected +{expected}"
            f" completed (wrk acked {record['acked']}, {len(unacked)} unacked, "
            f"{len(dropped)} dropped at stop) and none active"
        )
    note = (
        f"fetched {record['fetched']}, acked {record['acked']}, settled after stop "
        f"{len(unacked)} unacked + {len(dropped)} dropped; store completed +{completed}, active 0"
    )
    return WrkOutcome(record["acked"], record["duration_us"] / 1e6, note)
