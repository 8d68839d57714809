"""A service's database on each backend, for the database tests of history and memory."""

from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Executable, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from services.runtime.database import Database

BACKENDS = ["sqlite", "postgres"]


@dataclass(frozen=True)
class ServiceDatabase:
    """Fresh databases of one service (its Postgres schema is its name) and queries on them."""

    database: Database

    @property
    def name(self) -> str:
        """Return the service's name: its Postgres schema and its SQLite file's stem."""
        return self.database.schema

    async def fresh_url(self, backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
        """Return a URL on ``backend`` where the service's schema does not exist yet."""
        if backend == "sqlite":
            return f"sqlite+aiosqlite:///{tmp_path}/{self.name}.db"
        url = str(request.getfixturevalue("postgres_url"))
        await self.drop(url)
        return url

    async def drop(self, url: str) -> None:
        """Drop the service's Postgres schema, so the next migration starts from nothing."""
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f"DROP SCHEMA IF EXISTS {self.name} CASCADE"))
        finally:
            await engine.dispose()

    async def scalar(self, url: str, sql: str | Executable) -> object:
        """Return the one value a query answers."""
        engine = self.database.make_engine(url)
        try:
            async with engine.connect() as conn:
                query = text(sql) if isinstance(sql, str) else sql
                return (await conn.execute(query)).scalar_one()
        finally:
            await engine.dispose()

    def version_table(self, backend: str) -> str:
        """Return where the service's Alembic keeps its version on ``backend``."""
        if backend == "postgres":
            return f"{self.name}.alembic_version"
        return f"{self.name}_alembic_version"

    async def downgrade(self, url: str, revision: str) -> None:
        """Take the service's schema down to ``revision``."""
        engine = self.database.make_engine(url)
        try:
            async with engine.connect() as conn:
                conn = await conn.execution_options(**{self.database.write_option: True})
                async with conn.begin():
                    config = self.database.alembic_config
                    await conn.run_sync(lambda sync: command.downgrade(config(sync), revision))
        finally:
            await engine.dispose()
