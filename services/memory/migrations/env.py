"""Alembic environment: migrate the connection handed over by ``db.migrate``.

Postgres keeps the tables and the version table in schema ``memory``. SQLite
has no schemas, so tables are unqualified and the version table is named
``memory_alembic_version`` so history's migrations can share the file.
"""

from alembic import context
from sqlalchemy import Connection, text

from services.memory.models import SCHEMA, metadata


def version_table(connection: Connection) -> tuple[str, str | None]:
    """Return the version table name and schema for the connection's backend."""
    if connection.dialect.name == "postgresql":
        return "alembic_version", SCHEMA
    return "memory_alembic_version", None


def run_migrations(connection: Connection) -> None:
    """Bring the schema up to the requested revision on one connection."""
    table, schema = version_table(connection)
    if schema is not None:
        # Alembic creates its version table before the first migration runs.
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=table,
        version_table_schema=schema,
        include_schemas=schema is not None,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run memory migrations through services.memory.db.migrate(database_url)")
run_migrations(connection)
