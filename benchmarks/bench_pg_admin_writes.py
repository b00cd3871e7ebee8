#!/usr/bin/env python
"""What the admin API's migration (0002: four trigger-filled columns, ten indexes) costs the
PostgreSQL store's writes: bench_store.py's push/fetch/ack pattern on a store at schema
version 1 and on one at version 2, in two schemas of one database, rounds interleaved.
Prints each side's median µs per store operation and server CPU per job, and the ratio.

    python benchmarks/bench_pg_admin_writes.py [--jobs N] [--concurrency C] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_store import DEFAULT_URL, Round, Variant, _one_round, _with_query
from ojs_amqp.store.postgres import PostgresJobStore
from ojs_amqp.store.postgres import migrations as schema


@contextlib.contextmanager
def _only_version_1() -> Iterator[None]:
    """migrate() as it was before the admin migration: version 1 only."""
    saved = schema.migrations, schema.SCHEMA_VERSION
    first = saved[0]()[:1]
    schema.migrations, schema.SCHEMA_VERSION = (lambda: first), 1  # type: ignore[assignment]
    try:
        yield
    finally:
        schema.migrations, schema.SCHEMA_VERSION = saved  # type: ignore[assignment]


class Version1Store(PostgresJobStore):
    async def open(self) -> None:
        with _only_version_1():
            await super().open()


async def main(args: argparse.Namespace) -> int:
    names = {v: f"bench_pgadmin_{v}_{secrets.token_hex(4)}" for v in ("v1", "v2")}
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        for name in names.values():
            conn.execute(f"CREATE SCHEMA {name}")

    def variant(version: str) -> Variant:
        async def make(rnd: int) -> tuple[PostgresJobStore, str | None]:
            app = f"{names[version]}_{rnd}"
            url = _with_query(args.postgres, search_path=names[version], application_name=app)
            return (Version1Store(url) if version == "v1" else PostgresJobStore(url)), app

        return Variant(version, make)  # type: ignore[arg-type]

    variants = [variant("v1"), variant("v2")]
    rounds: dict[str, list[Round]] = {"v1": [], "v2": []}
    try:
        for rnd in range(args.rounds):
            for v in variants:
                rounds[v.name].append(await _one_round(v, rnd, args, args.postgres))
                with psycopg.connect(args.postgres, autocommit=True) as conn:
                    conn.execute(f"TRUNCATE {names[v.name]}.ojs_jobs")
                print(f"round {rnd + 1} {v.name}: {rounds[v.name][-1].per_op_us():.1f} µs/op",
                      file=sys.stderr)  # fmt: skip
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f"DROP SCHEMA {name} CASCADE")
    median = {k: sorted(rs, key=lambda r: r.wall_s)[len(rs) // 2] for k, rs in rounds.items()}
    v1, v2 = median["v1"], median["v2"]
    print(f"\nbench_pg_admin_writes: {args.jobs} jobs, {args.concurrency} in flight, "
          f"median of {args.rounds} interleaved rounds")  # fmt: skip
    for name, r in median.items():
        server = r.server_us_per_job()
        shown = f"{server:.0f}" if server is not None else "n/a"
        print(f"  schema {name}: {r.per_op_us():7.1f} µs/op, server CPU {shown} µs/job")
    print(f"  v2 / v1 wall per op: {v2.per_op_us() / v1.per_op_us():.2f}x")
    s1, s2 = v1.server_us_per_job(), v2.server_us_per_job()
    if s1 and s2:
        print(f"  v2 / v1 server CPU per job: {s2 / s1:.2f}x")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", default=DEFAULT_URL)
    sys.exit(asyncio.run(main(parser.parse_args())))
