"""Postgres through asyncpg's pool; a transaction is one pooled connection's."""

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from services.runtime.sql.base import ANY, PG_ONLY, IntegrityError, Row, Sql, Tx

POOLER_KEYS = ("prepared_statement_cache_size", "statement_cache_size")


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
        text = ANY.sub(lambda m: f"= ANY(${m[1]}::{m[2]}[])", template)
        text = PG_ONLY.sub(lambda m: m[1], text)
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

    async def execute(self, template: str, *args: Any) -> int:
        """Run one statement, committed on its own (one trip); return the rows it changed."""
        async with (await self._ready()).acquire() as conn:
            return await _PgTx(self, conn).execute(template, *args)

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


