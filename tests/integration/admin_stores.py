"""The admin API tests' daemons on either store: SQLite (a file per daemon) or PostgreSQL (a
private schema per test, dropped after its daemons have stopped)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.conftest import daemon_factory
from tests.daemon import Daemon
from tests.postgres import private_schema, require_postgres

STORES = ["sqlite", "postgresql"]


@contextlib.contextmanager
def daemons_on(store: str, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """A daemon factory like `make_daemon`, its daemons on `store` (one of STORES)."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(private_schema(require_postgres())) if store != "sqlite" else ""
        factory = stack.enter_context(daemon_factory(tmp_path))  # unwound first: daemons stop

        def on_store(*extra_args: str, **options: bool) -> Daemon:
            return factory(*(("--store", url) if url else ()), *extra_args, **options)

        yield on_store
