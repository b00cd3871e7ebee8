"""One daemon per PostgreSQL store: several daemons on one database are not supported yet
(docs/scaling.md), so a second one is refused at start instead of silently sharing the rows.

The first daemon holds a session advisory lock, keyed by the schema its tables live in, on a
connection of its own for as long as the store is open. A daemon that dies drops the lock
with its connection: at once when its process dies (the server sees the socket close), and
when its machine or network is gone, once the server's TCP keepalives on that connection go
unanswered (asked for below: probes after 10 s idle, every 5 s, 3 of them). The next daemon
is refused (exit 2) until then; a supervisor that restarts it gets in after that. This is a
guard against a mistake, not fencing: a daemon whose lock connection breaks does not stop,
and while it is cut off a second daemon could start.
"""

from __future__ import annotations

import asyncpg

from ojs_amqp.store.base import StoreUnavailable
from ojs_amqp.store.postgres.options import PostgresOptions

_TAKE = "SELECT pg_try_advisory_lock(hashtext('ojs-amqp daemon ' || current_schema()))"
_HOLDER = """
SELECT a.pid, coalesce(host(a.client_addr), 'local socket'), a.application_name
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted
   AND l.objid::bigint = (hashtext('ojs-amqp daemon ' || current_schema())::bigint & 4294967295)
 LIMIT 1
"""


#: How soon the server notices that the lock holder's machine is gone (about 25 s).
_KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
               "tcp_keepalives_count": "3"}  # fmt: skip


class StoreInUse(StoreUnavailable):
    """Another daemon has this PostgreSQL store open."""

    hint = "Run one daemon per PostgreSQL database (or schema); see docs/scaling.md."


async def hold(options: PostgresOptions) -> asyncpg.Connection:
    """A connection holding this store's daemon lock; StoreInUse when another daemon has it."""
    conn = await asyncpg.connect(
        options.dsn, timeout=options.connect_timeout_s, command_timeout=options.command_timeout_s,
        server_settings={**options.server_settings, **_KEEPALIVES},
    )  # fmt: skip
    command_timeout_s = options.command_timeout_s
    try:
        if await conn.fetchval(_TAKE):
            return conn
        holder = await conn.fetchrow(_HOLDER)
    except BaseException:
        conn.terminate()
        raise
    await conn.close(timeout=command_timeout_s)
    who = (f"backend pid {holder[0]}, client {holder[1]}, application {holder[2]!r}"
           if holder else "a session that just ended")  # fmt: skip
    raise StoreInUse(
        "another ojs-amqp daemon has this PostgreSQL store open "
        f"({who}); several daemons on one database are not supported yet (docs/scaling.md)"
    )
