"""SQL plumbing shared by the services that own tables: engines, SQLite pragmas, migrations.

A service describes its database once (:class:`Database`: its Postgres schema,
the package holding its Alembic ``migrations/``, its migration lock and the
execution option that marks write transactions) and gets an engine factory and
``migrate`` from it. On SQLite the schema is translated away, so one set of
models serves both backends, and several services can share one SQLite file.
"""

import asyncio
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import (
    Connection,
    DateTime,
    Dialect,
    MetaData,
    TypeDecorator,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# Set on every connection. The journal mode is kept in the file itself, so ``migrate``
# switches it to WAL once (see _sqlite_wal). WAL with synchronous=NORMAL survives a crash
# of any process; only an OS crash or power loss can drop the last commits. Production
# runs on Postgres.
SQLITE_PRAGMAS = (
    "busy_timeout = 10000",
    "foreign_keys = ON",
    "synchronous = NORMAL",
)
SQLITE_WAL_WAIT = 10.0  # seconds ``migrate`` keeps trying to switch a busy file to WAL


def is_sqlite(database_url: str) -> bool:
    """Tell whether the URL points at SQLite."""
    return make_url(database_url).get_backend_name() == "sqlite"


def ensure_sqlite_dir(database_url: str) -> None:
    """Create the directory of a SQLite database file if it is missing."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


class UTCDateTime(TypeDecorator[datetime]):
    """Store aware datetimes as UTC and read them back aware, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite keeps text; one fixed naive UTC format keeps comparisons and ordering right.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def run_alembic_env(service: str, schema: str, metadata: MetaData) -> None:
    """Body of a service's Alembic ``env.py``: migrate the connection ``migrate`` handed over.

    Postgres keeps the tables and the version table in the service's schema. SQLite
    has no schemas, so tables are unqualified and the version table is named
    ``<service>_alembic_version`` so several services' migrations can share the file.
    """
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(f"run {service} migrations through its Database.migrate()")
    if connection.dialect.name == "postgresql":
        table, version_schema = "alembic_version", schema
        # Alembic creates its version table before the first migration runs.
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
    else:
        table, version_schema = f"{service}_alembic_version", None
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=table,
        version_table_schema=version_schema,
        include_schemas=version_schema is not None,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


@dataclass(frozen=True)
class Database:
    """How one service keeps its tables."""

    schema: str
    package: str
    lock_key: int  # any fixed 64-bit number, the same in every replica of the service
    write_option: str  # execution option that makes a SQLite transaction BEGIN IMMEDIATE

    def make_engine(
        self, database_url: str, pool_size: int = 5, max_overflow: int = 10
    ) -> AsyncEngine:
        """Build the async engine; on SQLite, translate the schema away and set pragmas."""
        url = make_url(database_url)
        # A server can drop idle connections; a SQLite file cannot: no ping per checkout.
        options: dict[str, Any] = {"pool_pre_ping": url.get_backend_name() != "sqlite"}
        if url.database not in (None, "", ":memory:"):
            # An in-memory SQLite database lives in one connection: no pool to size.
            options.update(pool_size=pool_size, max_overflow=max_overflow)
        if url.get_backend_name() == "postgresql":
            url, options["connect_args"] = _pooler_args(url)
        engine = create_async_engine(url, **options)
        if not is_sqlite(database_url):
            return engine
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", self._sqlite_begin)
        return engine.execution_options(schema_translate_map={self.schema: None})

    def _sqlite_begin(self, conn: Connection) -> None:
        # A writer that starts as a reader can fail at once with SQLITE_BUSY when it
        # upgrades its lock; taking the write lock up front makes writers queue instead.
        immediate = conn.get_execution_options().get(self.write_option, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def alembic_config(self, connection: Connection | None = None) -> Config:
        """Build the Alembic configuration from the migrations shipped in the package."""
        config = Config()
        config.set_main_option("script_location", str(files(self.package) / "migrations"))
        config.attributes["connection"] = connection
        return config

    async def migrate_engine(self, engine: AsyncEngine, revision: str = "head") -> None:
        """Upgrade the database behind ``engine``; replicas on Postgres take turns."""

        def upgrade(connection: Connection) -> None:
            command.upgrade(self.alembic_config(connection), revision)

        async with engine.connect() as conn:
            conn = await conn.execution_options(**{self.write_option: True})
            async with conn.begin():
                if conn.dialect.name == "postgresql":
                    # Held until commit, so concurrent replicas migrate one after another.
                    await conn.execute(select(func.pg_advisory_xact_lock(self.lock_key)))
                await conn.run_sync(upgrade)

    async def migrate(self, database_url: str, revision: str = "head") -> None:
        """Upgrade this service's schema of the database at ``database_url``."""
        ensure_sqlite_dir(database_url)
        engine = self.make_engine(database_url, pool_size=1, max_overflow=0)
        try:
            if is_sqlite(database_url):
                await _sqlite_wal(engine)
            await self.migrate_engine(engine, revision)
        finally:
            await engine.dispose()


def _pooler_args(url: URL) -> tuple[URL, dict[str, Any]]:
    """Behind pgbouncer in transaction mode, prepare no statement that outlives a query.

    ``prepared_statement_cache_size=0`` (SQLAlchemy's cache) or
    ``statement_cache_size=0`` (asyncpg's) in the URL turns both caches off and
    names each prepared statement uniquely, as a pooled server connection may
    already hold one by asyncpg's default name.
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


async def _sqlite_wal(engine: AsyncEngine) -> None:
    """Switch a SQLite file to WAL, waiting while other connections write to it.

    SQLite answers a busy journal-mode switch at once instead of calling the busy
    handler (the connection already reads, and waiting could deadlock), so
    ``busy_timeout`` does not cover it: retry here, outside any transaction.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SQLITE_WAL_WAIT
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        while True:
            try:
                await driver.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or loop.time() > deadline:
                    raise
            await asyncio.sleep(0.05)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit transactions are off; Database._sqlite_begin opens them.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()



async def unreachable(engine: AsyncEngine) -> str | None:
    """Run the cheapest query there is; return why the database did not answer, or None."""
    try:
        async with engine.connect() as conn:
            await conn.execute(select(1))
    except SQLAlchemyError as exc:
        return f"database unreachable: {type(exc).__name__}"
    return None
