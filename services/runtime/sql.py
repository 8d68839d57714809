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

import asyncio
import json
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import URL, make_url

from services.runtime.database import SQLITE_PRAGMAS

T = TypeVar("T")
Row = Sequence[Any]
_ANY = re.compile(r"\{any \$(\d+) (\w+)\}")
_PG_ONLY = re.compile(r"\{pg:([^}]*)\}")
_PARAM = re.compile(r"\$(\d+)")
_NUMBERED = re.compile(r"\?(\d+)")
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"
POOLER_KEYS = ("prepared_statement_cache_size", "statement_cache_size")


class IntegrityError(Exception):
    """A constraint refused the statement (unique, foreign key, check)."""


class DatabaseError(Exception):
    """The database failed the statement for another reason (unreachable, locked, ...)."""


def uuid_of(value: Any) -> uuid.UUID:
    """Read a UUID column (a UUID on Postgres, 32-digit hex text on SQLite)."""
    if type(value) is uuid.UUID:
        return value
    if isinstance(value, str):
        return uuid.UUID(hex=value)
    return uuid.UUID(bytes=value.bytes)  # asyncpg's own UUID type: a plain one, for hashing


def time_of(value: Any) -> datetime:
    """Read a timestamp column as an aware UTC datetime."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    assert isinstance(value, datetime)
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def maybe_uuid(value: Any) -> uuid.UUID | None:
    """Read a nullable UUID column."""
    return None if value is None else uuid_of(value)


def maybe_time(value: Any) -> datetime | None:
    """Read a nullable timestamp column."""
    return None if value is None else time_of(value)


class Tx:
    """Statements of one transaction (or of none: each statement on its own)."""

    async def fetch(self, template: str, *args: Any) -> list[Row]:
        """Run a query and return its rows."""
        raise NotImplementedError

    async def execute(self, template: str, *args: Any) -> int:
        """Run a statement and return how many rows it changed."""
        raise NotImplementedError

    async def executemany(self, template: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per parameter row."""
        raise NotImplementedError

    async def fetch_all(self, *queries: tuple[str, Sequence[Any]]) -> list[list[Row]]:
        """Run queries in order and return each one's rows (in one trip on SQLite)."""
        return [await self.fetch(template, *args) for template, args in queries]

    async def finish(self, *writes: tuple[str, Sequence[Sequence[Any]]]) -> None:
        """Run each statement once per parameter row, then commit (in one trip on SQLite).

        On Postgres the commit happens as the transaction's block exits.
        """
        for template, rows in writes:
            if rows:
                await self.executemany(template, rows)


class Sql:
    """A database of one service, reached without SQLAlchemy."""

    dialect: str

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._rendered: dict[str, str] = {}

    def render(self, template: str) -> str:
        """Return the statement of ``template`` in this database's dialect (cached)."""
        text = self._rendered.get(template)
        if text is None:
            text = self._rendered[template] = self._render(template)
        return text

    def _render(self, template: str) -> str:
        raise NotImplementedError

    def read(self) -> AbstractAsyncContextManager[Tx]:
        """Return a context manager of statements that need no snapshot (``async with``)."""
        raise NotImplementedError

    def write(self) -> AbstractAsyncContextManager[Tx]:
        """Return a context manager of a write transaction (``async with``)."""
        raise NotImplementedError

    async def fetch(self, template: str, *args: Any) -> list[Row]:
        """Run one query outside any transaction and return its rows."""
        raise NotImplementedError

    async def open(self) -> None:
        """Connect now (it happens on first use otherwise), so a bad URL fails at start."""

    async def close(self) -> None:
        """Close every connection."""

    async def unreachable(self) -> str | None:
        """Run the cheapest query there is; return why the database did not answer, or None."""
        try:
            await self.fetch("SELECT 1")
        except (DatabaseError, OSError, TimeoutError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:
            return f"database unreachable: {type(exc).__name__}"
        return None


def database(
    database_url: str, *, schema: str, pool_size: int = 5, max_overflow: int = 10
) -> Sql:
    """Describe the database at a SQLAlchemy URL (``postgresql+asyncpg://``, ``sqlite...://``);
    nothing connects before :meth:`Sql.open` or the first statement."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        return Postgres(url, schema, pool_size + max_overflow)
    return Sqlite(url, schema, connections=min(4, pool_size))


# ---- Postgres ----------------------------------------------------------------------------


class _Unreset(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection handed back as it is (its open transaction still rolled back).

    asyncpg resets every released connection with a query of its own (unlisten, reset
    settings, release session advisory locks): a round trip per transaction. Nothing
    here leaves such state behind: locks are transaction-scoped, settings untouched.
    """

    def get_reset_query(self) -> str:
        return ""


class Postgres(Sql):
    """asyncpg's pool; a transaction is one pooled connection's."""

    dialect = "postgresql"

    def __init__(self, url: URL, schema: str, size: int) -> None:
        super().__init__(schema)
        self.url = url
        self.size = max(1, size)
        self._pool: Any = None
        self._opening = asyncio.Lock()

    async def open(self) -> None:
        """Create the pool with one connection (more as needed, up to the pool size)."""
        await self._ready()

    async def _ready(self) -> Any:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                url, query = self.url, dict(self.url.query)
                args: dict[str, Any] = {}
                if "ssl" in query:
                    args["ssl"] = query["ssl"]
                # Behind pgbouncer in transaction mode (see runtime.database._pooler_args).
                caches = [query.get(k) for k in POOLER_KEYS]
                if any(c is not None and str(c) == "0" for c in caches):
                    args["statement_cache_size"] = 0
                self._pool = await asyncpg.create_pool(
                    host=url.host, port=url.port, user=url.username, password=url.password,
                    database=url.database, min_size=1, max_size=self.size,
                    connection_class=_Unreset, **args,
                )
        return self._pool

    def _render(self, template: str) -> str:
        text = _ANY.sub(lambda m: f"= ANY(${m[1]}::{m[2]}[])", template)
        text = _PG_ONLY.sub(lambda m: m[1], text)
        return text.replace("{s}.", f"{self.schema}.")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        """Run statements on one connection, each on its own (reads need no snapshot here)."""
        async with (await self._ready()).acquire() as conn:
            yield _PgTx(self, conn)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        """Run statements in one transaction, committed when the block exits cleanly."""
        async with (await self._ready()).acquire() as conn, conn.transaction():
            yield _PgTx(self, conn)

    async def fetch(self, template: str, *args: Any) -> list[Row]:
        """Run one query outside any transaction and return its rows."""
        pool = await self._ready()
        try:
            return await pool.fetch(self.render(template), *args)  # type: ignore[no-any-return]
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


class _PgTx(Tx):
    def __init__(self, sql: Postgres, conn: Any) -> None:
        self.sql = sql
        self.conn = conn

    async def fetch(self, template: str, *args: Any) -> list[Row]:
        try:
            return await self.conn.fetch(self.sql.render(template), *args)  # type: ignore[no-any-return]
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc

    async def execute(self, template: str, *args: Any) -> int:
        try:
            status: str = await self.conn.execute(self.sql.render(template), *args)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc
        count = status.rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0

    async def executemany(self, template: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            await self.conn.executemany(self.sql.render(template), rows)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc


# ---- SQLite ------------------------------------------------------------------------------


def _sqlite_value(value: Any) -> Any:
    """Store a value as SQLAlchemy does on SQLite."""
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).strftime(SQLITE_TIME)
    if isinstance(value, list | tuple | set | frozenset):
        return json.dumps([_sqlite_value(v) for v in value])
    return value


class _Connection:
    """One SQLite connection and the one thread that uses it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        self.conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self.conn is None:
            # Transactions are ours (BEGIN travels with the first statement).
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            for pragma in SQLITE_PRAGMAS:
                conn.execute(f"PRAGMA {pragma}")
            self.conn = conn
        return self.conn

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.thread, lambda: work(self._open()))
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        except sqlite3.Error as exc:
            raise DatabaseError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        def shut() -> None:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

        self.thread.submit(shut).result()
        self.thread.shutdown()


def _query(
    conn: sqlite3.Connection, begin: str | None, text: str, args: Sequence[Any]
) -> list[Row]:
    if begin:
        conn.execute(begin)
    return conn.execute(text, args).fetchall()


def _change(conn: sqlite3.Connection, begin: str | None, text: str, args: Sequence[Any]) -> int:
    if begin:
        conn.execute(begin)
    return conn.execute(text, args).rowcount


def _change_many(
    conn: sqlite3.Connection, begin: str | None, text: str, rows: Sequence[Sequence[Any]]
) -> None:
    if begin:
        conn.execute(begin)
    conn.executemany(text, rows)


def _query_all(
    conn: sqlite3.Connection, begin: str | None, queries: Sequence[tuple[str, Sequence[Any]]]
) -> list[list[Row]]:
    if begin:
        conn.execute(begin)
    return [conn.execute(text, args).fetchall() for text, args in queries]


def _change_all(
    conn: sqlite3.Connection, writes: Sequence[tuple[str, Sequence[Sequence[Any]]]]
) -> None:
    for text, rows in writes:
        if rows:
            conn.executemany(text, rows)


def _finish(
    conn: sqlite3.Connection,
    begin: str | None,
    writes: Sequence[tuple[str, Sequence[Sequence[Any]]]],
) -> None:
    if begin:
        conn.execute(begin)
    for text, rows in writes:
        if rows:
            conn.executemany(text, rows)
    conn.execute("COMMIT")


class Sqlite(Sql):
    """A few connections, each on its own thread; one writer of this process at a time."""

    dialect = "sqlite"

    def __init__(self, url: URL, schema: str, connections: int = 4) -> None:
        super().__init__(schema)
        database = url.database or ""
        if database in ("", ":memory:"):
            raise ValueError("the request path needs a SQLite file, not an in-memory database")
        self.path = str(Path(database).expanduser())
        self._idle: asyncio.Queue[_Connection] = asyncio.Queue()
        self._all = [_Connection(self.path) for _ in range(max(1, connections))]
        for connection in self._all:
            self._idle.put_nowait(connection)
        self._turn = asyncio.Lock()
        self._arity: dict[str, int] = {}

    def _render(self, template: str) -> str:
        text = _ANY.sub(lambda m: f"IN (SELECT value FROM json_each(?{m[1]}))", template)
        text = _PG_ONLY.sub("", text)
        return _PARAM.sub(r"?\1", text.replace("{s}.", ""))

    def bind(self, template: str, args: Sequence[Any]) -> tuple[str, list[Any]]:
        """Return the statement and its values; parameters only Postgres uses are dropped."""
        text = self.render(template)
        arity = self._arity.get(text)
        if arity is None:
            arity = self._arity[text] = max((int(n) for n in _NUMBERED.findall(text)), default=0)
        return text, [_sqlite_value(a) for a in args[:arity]]

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Connection]:
        connection = await self._idle.get()
        try:
            yield connection
        finally:
            self._idle.put_nowait(connection)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        """Run statements on one connection, each on its own (reads need no snapshot here)."""
        async with self._connection() as connection:
            yield _SqliteTx(self, connection, None)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        """Run statements in one transaction, committed when the block exits cleanly."""
        async with self._turn, self._connection() as connection:
            # A writer that starts as a reader can fail at once with SQLITE_BUSY when it
            # upgrades its lock; taking the write lock up front makes writers queue instead.
            tx = _SqliteTx(self, connection, "BEGIN IMMEDIATE")
            try:
                yield tx
            except BaseException:
                if tx.begun and not tx.committed:
                    await connection.run(lambda conn: conn.execute("ROLLBACK"))
                raise
            if tx.begun and not tx.committed:
                await connection.run(lambda conn: conn.execute("COMMIT"))

    async def fetch(self, template: str, *args: Any) -> list[Row]:
        """Run one query outside any transaction and return its rows."""
        async with self.read() as tx:
            return await tx.fetch(template, *args)

    async def close(self) -> None:
        """Close every connection and its thread."""
        for connection in self._all:
            await asyncio.to_thread(connection.close)


class _SqliteTx(Tx):
    def __init__(self, sql: Sqlite, connection: _Connection, begin: str | None) -> None:
        self.sql = sql
        self.connection = connection
        self._begin = begin
        self.begun = False
        self.committed = False

    def _next_begin(self) -> str | None:
        begin, self._begin = self._begin, None
        self.begun = self.begun or begin is not None
        return begin

    async def fetch(self, template: str, *args: Any) -> list[Row]:
        text, values = self.sql.bind(template, args)
        work = partial(_query, begin=self._next_begin(), text=text, args=values)
        return await self.connection.run(work)

    async def execute(self, template: str, *args: Any) -> int:
        text, values = self.sql.bind(template, args)
        work = partial(_change, begin=self._next_begin(), text=text, args=values)
        return await self.connection.run(work)

    async def executemany(self, template: str, rows: Iterable[Sequence[Any]]) -> None:
        bound = [self.sql.bind(template, row) for row in rows]
        text = bound[0][0] if bound else ""
        values = [row for _, row in bound]
        if values:
            await self.connection.run(
                partial(_change_many, begin=self._next_begin(), text=text, rows=values)
            )

    async def fetch_all(self, *queries: tuple[str, Sequence[Any]]) -> list[list[Row]]:
        rendered = [self.sql.bind(t, args) for t, args in queries]
        return await self.connection.run(
            partial(_query_all, begin=self._next_begin(), queries=rendered)
        )

    async def finish(self, *writes: tuple[str, Sequence[Sequence[Any]]]) -> None:
        rendered = [
            (self.sql.render(t), [self.sql.bind(t, row)[1] for row in rows]) for t, rows in writes
        ]
        begin = self._next_begin()
        if not self.begun:  # not a transaction: each write committed on its own already
            await self.connection.run(partial(_change_all, writes=rendered))
            return
        await self.connection.run(partial(_finish, begin=begin, writes=rendered))
        self.committed = True
