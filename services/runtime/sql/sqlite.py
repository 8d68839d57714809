"""SQLite on a few threads of its own, each with one connection (the stdlib's sqlite3).

A transaction stays on its connection's thread; its ``BEGIN`` travels with its
first statement; this process's writers take turns on an asyncio lock (waiting
there costs nothing, unlike SQLite's busy handler). Values are stored as
SQLAlchemy stores them on SQLite, so rows written by either read the same.
"""

import asyncio
import json
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import URL

from services.runtime.database import SQLITE_PRAGMAS
from services.runtime.sql.base import ANY, PG_ONLY, DatabaseError, IntegrityError, Row, Sql, Tx

T = TypeVar("T")
PARAM = re.compile(r"\$(\d+)")
NUMBERED = re.compile(r"\?(\d+)")
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


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
        if not self.path:
            raise DatabaseError("the request path needs a SQLite file, not an in-memory database")
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
        # Several connections cannot share one in-memory database: said on first use, so
        # an app that only describes itself (its AsyncAPI document) can still be built.
        self.path = "" if database in ("", ":memory:") else str(Path(database).expanduser())
        self._idle: asyncio.Queue[_Connection] = asyncio.Queue()
        self._all = [_Connection(self.path) for _ in range(max(1, connections))]
        for connection in self._all:
            self._idle.put_nowait(connection)
        self._turn = asyncio.Lock()
        self._arity: dict[str, int] = {}

    def _render(self, template: str) -> str:
        text = ANY.sub(lambda m: f"IN (SELECT value FROM json_each(?{m[1]}))", template)
        text = PG_ONLY.sub("", text)
        return PARAM.sub(r"?\1", text.replace("{s}.", ""))

    def bind(self, template: str, args: Sequence[Any]) -> tuple[str, list[Any]]:
        """Return the statement and its values; parameters only Postgres uses are dropped."""
        text = self.render(template)
        arity = self._arity.get(text)
        if arity is None:
            arity = self._arity[text] = max((int(n) for n in NUMBERED.findall(text)), default=0)
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

    async def execute(self, template: str, *args: Any) -> int:
        """Run one statement, committed on its own (one trip); return the rows it changed."""
        async with self._turn, self._connection() as connection:
            return await _SqliteTx(self, connection, None).execute(template, *args)

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
