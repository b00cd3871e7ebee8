"""--store names the store: a path or sqlite:/// URL the SQLite file, postgresql:// the
PostgreSQL store (with our bounded-wait parameters taken off the URL), anything else a clear
error at start."""

import pytest

from ojs_amqp.store import StoreConfigError, check_location, describe, open_store, sqlite_path
from ojs_amqp.store.postgres import PostgresJobStore
from ojs_amqp.store.postgres.options import parse
from ojs_amqp.store.sqlite import SqliteJobStore


@pytest.mark.parametrize(
    ("location", "path"),
    [("ojs-amqp.db", "ojs-amqp.db"), ("/var/lib/ojs/jobs.db", "/var/lib/ojs/jobs.db"),
     ("sqlite:///jobs.db", "jobs.db"), ("sqlite:////var/lib/jobs.db", "/var/lib/jobs.db")],
)  # fmt: skip
def test_a_path_or_a_sqlite_url_names_the_sqlite_file(location: str, path: str) -> None:
    assert sqlite_path(location) == path
    store = open_store(location)
    assert isinstance(store, SqliteJobStore) and store.kind == "sqlite"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_postgresql_url_names_the_postgresql_store(scheme: str) -> None:
    store = open_store(f"{scheme}://ojs:secret@db.internal:5433/jobs")
    assert isinstance(store, PostgresJobStore) and store.kind == "postgresql"


@pytest.mark.parametrize("location", ["mysql://x/y", "sqlite://jobs.db", "sqlite:///"])
def test_an_unknown_or_malformed_store_url_is_refused_clearly(location: str) -> None:
    with pytest.raises(StoreConfigError, match=r"no store we know|write a SQLite URL"):
        open_store(location)
    with pytest.raises(StoreConfigError, match=r"no store we know|write a SQLite URL"):
        check_location(location)


def test_a_bad_store_is_refused_where_the_settings_are_built() -> None:
    from ojs_amqp.settings import Settings
    from ojs_amqp.settings_schema import SettingsError

    with pytest.raises(SettingsError, match="'mysql://x/y' names no store we know"):
        Settings(store_path="mysql://x/y")
    with pytest.raises(SettingsError, match="pool_size='0'"):
        Settings(store_path="postgresql://u@h/db?pool_size=0")
    assert Settings(store_path="postgresql://u@h/db").store_path == "postgresql://u@h/db"


def test_our_parameters_leave_the_url_and_the_rest_stay() -> None:
    options = parse(
        "postgresql://u@h/db?connect_timeout=2.5&command_timeout=3&pool_size=8"
        "&statement_cache_size=0&search_path=ojs&sslmode=require"
    )
    assert options.dsn == "postgresql://u@h/db?search_path=ojs&sslmode=require"
    assert (options.connect_timeout_s, options.command_timeout_s) == (2.5, 3.0)
    assert (options.pool_size, options.statement_cache_size) == (8, 0)


def test_the_waits_are_bounded_by_default() -> None:
    options = parse("postgresql://u@h/db")
    assert 0 < options.connect_timeout_s <= 10 and 0 < options.command_timeout_s <= 30


@pytest.mark.parametrize(
    "query", ["connect_timeout=0", "command_timeout=-1", "pool_size=0", "pool_size=x",
              "statement_cache_size=-2"],
)  # fmt: skip
def test_a_bad_parameter_is_refused_with_its_name(query: str) -> None:
    with pytest.raises(StoreConfigError, match=query.split("=")[0]):
        parse(f"postgresql://u@h/db?{query}")


def test_a_password_never_reaches_the_log_line() -> None:
    assert describe("postgresql://ojs:s3cret@db/jobs") == "postgresql://ojs:***@db/jobs"
    assert describe("jobs.db") == "jobs.db"
