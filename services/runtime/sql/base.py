"""The pieces every backend shares: errors, column readers, the transaction and database types."""

import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import asyncpg

Row = Sequence[Any]
ANY = re.compile(r"\{any \$(\d+) (\w+)\}")
PG_ONLY = re.compile(r"\{pg:([^}]*)\}")


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


class Tx(ABC):
    """Statements of one transaction (or of none: each statement on its own)."""

    @abstractmethod
    async def fetch(self, template: str, *args: Any) -> list[Row]:
        """Run a query and return its rows."""

    @abstractmethod
    async def execute(self, template: str, *args: Any) -> int:
        """Run a statement and return how many rows it changed."""

    @abstractmethod
    async def executemany(self, template: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per parameter row."""

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


class Sql(ABC):
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

    @abstractmethod
    def _render(self, template: str) -> str:
        """Turn a template into this database's dialect."""

    @abstractmethod
    def read(self) -> AbstractAsyncContextManager[Tx]:
        """Return a context manager of statements that need no snapshot (``async with``)."""

    @abstractmethod
    def write(self) -> AbstractAsyncContextManager[Tx]:
        """Return a context manager of a write transaction (``async with``)."""

    @abstractmethod
    async def fetch(self, template: str, *args: Any) -> list[Row]:
        """Run one query outside any transaction and return its rows."""

    async def execute(self, template: str, *args: Any) -> int:
        """Run one statement, committed on its own (one trip); return the rows it changed."""
        async with self.write() as tx:
            return await tx.execute(template, *args)

    async def open(self) -> None:
        """Connect now (it happens on first use otherwise), so a bad URL fails at start."""
        return None  # a backend that opens nothing ahead of use keeps this

    @abstractmethod
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


