"""Alembic migrations of the history service (run by ``services.history.models.DATABASE``)."""
