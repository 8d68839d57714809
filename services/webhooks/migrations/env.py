"""Alembic environment of the webhooks service: see ``run_alembic_env``."""

from services.runtime.database import run_alembic_env
from services.webhooks.models import SCHEMA, metadata

run_alembic_env("webhooks", SCHEMA, metadata)
