"""Alembic environment of the memory service: see ``run_alembic_env``."""

from services.memory.models import SCHEMA, metadata
from services.runtime.database import run_alembic_env

run_alembic_env("memory", SCHEMA, metadata)
