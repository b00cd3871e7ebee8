"""The PostgreSQL job store (`--store postgresql://…`); see docs/scaling.md."""

from ojs_amqp.store.postgres.migrations import SCHEMA_VERSION
from ojs_amqp.store.postgres.store import PostgresJobStore

__all__ = ["SCHEMA_VERSION", "PostgresJobStore"]
