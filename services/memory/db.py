"""The database engine and migrations of the memory service."""

import uuid
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.memory.models import SCHEMA

# Any fixed 64-bit number, the same in every replica: it names the migration lock.
MIGRATION_LOCK_KEY = 0x6D656D6F_72793031  # "memory01"
# A write transaction on SQLite starts with BEGIN IMMEDIATE (see _sqlite_begin).
WRITE_OPTION = "memory_write"


def is_sqlite(database_url: str) -> bool:
    """Tell whether the URL points at SQLite."""
    return make_url(database_url).get_backend_name() == "sqlite"


def ensure_sqlite_dir(database_url: str) -> None:
    """Create the directory of a SQLite database file if it is missing."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def make_engine(database_url: str, pool_size: int = 5, max_overflow: int = 10) -> AsyncEngine:
    """Build the async engine; on SQLite, translate the schema away and set pragmas."""
    options: dict[str, Any] = {"pool_pre_ping": True}
    url = make_url(database_url)
    if url.database not in (None, "", ":memory:"):
        # An in-memory SQLite database lives in one connection: no pool to size.
        options.update(pool_size=pool_size, max_overflow=max_overflow)
    if url.get_backend_name() == "postgresql":
        url, options["connect_args"] = _pooler_args(url)
    engine = create_async_engine(url, **options)
    if not is_sqlite(database_url):
        return engine
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine.execution_options(schema_translate_map={SCHEMA: None})


def _pooler_args(url: URL) -> tuple[URL, dict[str, Any]]:
    """Behind pgbouncer in transaction mode, prepare no statement that outlives a query.

    ``prepared_statement_cache_size=0`` or ``statement_cache_size=0`` in the URL
    turns both statement caches off and names each prepared statement uniquely.
    """
    query = dict(url.query)
    sizes = [
        query.pop(name, None) for name in ("prepared_statement_cache_size", "statement_cache_size")
    ]
    if not any(size is not None and str(size) == "0" for size in sizes):
        return url, {}
    url = url.set(query={**query, "prepared_statement_cache_size": "0"})
    return url, {
        "statement_cache_size": 0,
        "prepared_statement_name_func": lambda: f"__chatbus_{uuid.uuid4().hex}__",
    }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit transactions are off; _sqlite_begin opens them instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL with synchronous=NORMAL survives a crash of any process; only an OS crash or power
    # loss can drop the last commits. Production runs on Postgres.
    # busy_timeout first: switching to WAL takes a lock, and must wait for it like any write.
    pragmas = (
        "busy_timeout = 10000",
        "foreign_keys = ON",
        "journal_mode = WAL",
        "synchronous = NORMAL",
    )
    for pragma in pragmas:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # A writer that starts as a reader can fail at once with SQLITE_BUSY when it
    # upgrades its lock; taking the write lock up front makes writers queue instead.
    immediate = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def alembic_config(connection: Connection | None = None) -> Config:
    """Build the Alembic configuration from the migrations shipped in this package."""
    config = Config()
    config.set_main_option("script_location", str(files("services.memory") / "migrations"))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


async def migrate_engine(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database behind ``engine``; replicas on Postgres take turns."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(**{WRITE_OPTION: True})
        async with conn.begin():
            if conn.dialect.name == "postgresql":
                # Held until commit, so concurrent replicas migrate one after another.
                await conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            await conn.run_sync(_upgrade, revision)


async def migrate(database_url: str, revision: str = "head") -> None:
    """Upgrade the memory schema of the database at ``database_url`` to ``revision``."""
    ensure_sqlite_dir(database_url)
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        await migrate_engine(engine, revision)
    finally:
        await engine.dispose()
