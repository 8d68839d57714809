"""SQL on the request path without SQLAlchemy: asyncpg on Postgres, sqlite3 in threads on SQLite.

Measured on the history request path: SQLAlchemy's asyncio layer costs about
150 µs of CPU per statement over asyncpg's own 40 µs, and on SQLite aiosqlite
makes three or four thread round trips per statement. The services keep
SQLAlchemy for their schema (tables, Alembic migrations) and write the few
statements they run per request here, once, as dialect-neutral templates:

- ``$1``, ``$2``, ...: parameters (``?1``, ``?2`` on SQLite);
- ``{s}.``: the service's schema on Postgres, nothing on SQLite;
- ``{any $1 uuid}`` (or ``text``, ``bigint``): membership in a list parameter,
  ``= ANY($1::uuid[])`` on Postgres, ``IN (SELECT value FROM json_each(?1))`` on SQLite;
- ``{pg: ...}``: text only Postgres runs (``FOR UPDATE``, ``SKIP LOCKED``); SQLite has
  one writer at a time, which is the lock.

Values go in as Postgres takes them (UUIDs, aware datetimes, lists). SQLite keeps
them as SQLAlchemy does (32-digit hex text, naive UTC text with microseconds), so
rows written by either layer read the same; :func:`uuid_of` and :func:`time_of`
read a column back on either backend.

SQLite runs on a few threads of its own, each with one connection; a
transaction stays on its connection's thread, its ``BEGIN`` travels with its
first statement, and this process's writers take turns on an asyncio lock
(waiting there costs nothing, unlike SQLite's busy handler).
"""

from sqlalchemy.engine import make_url

from services.runtime.sql.base import (
    DatabaseError,
    IntegrityError,
    Row,
    Sql,
    Tx,
    maybe_time,
    maybe_uuid,
    time_of,
    uuid_of,
)
from services.runtime.sql.postgres import Postgres
from services.runtime.sql.sqlite import Sqlite

__all__ = [
    "DatabaseError",
    "IntegrityError",
    "Postgres",
    "Row",
    "Sql",
    "Sqlite",
    "Tx",
    "database",
    "maybe_time",
    "maybe_uuid",
    "time_of",
    "uuid_of",
]


def database(
    database_url: str, *, schema: str, pool_size: int = 5, max_overflow: int = 10
) -> Sql:
    """Describe the database at a SQLAlchemy URL (``postgresql+asyncpg://``, ``sqlite...://``);
    nothing connects before :meth:`Sql.open` or the first statement."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        return Postgres(url, schema, pool_size + max_overflow)
    return Sqlite(url, schema, connections=min(4, pool_size))
