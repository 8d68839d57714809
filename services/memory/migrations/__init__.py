"""Alembic migrations of the memory service (run through ``services.memory.db.migrate``)."""
