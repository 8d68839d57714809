"""Alembic migrations of the memory service (run by ``services.memory.models.DATABASE``)."""
