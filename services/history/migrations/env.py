"""Alembic environment of the history service: see ``run_alembic_env``."""

from services.history.models import SCHEMA, metadata
from services.runtime.database import run_alembic_env

run_alembic_env("history", SCHEMA, metadata)
