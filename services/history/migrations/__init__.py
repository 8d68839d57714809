"""Alembic migrations of the history service (run through ``services.history.db.migrate``)."""
