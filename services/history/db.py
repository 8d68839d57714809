"""The database of the history service: its schema, engine and migrations."""

from services.history.models import SCHEMA
from services.runtime.database import Database, ensure_sqlite_dir, is_sqlite

DATABASE = Database(
    schema=SCHEMA,
    package="services.history",
    lock_key=0x68697374_6F727931,  # "history1"
    write_option="history_write",
)
WRITE_OPTION = DATABASE.write_option
make_engine = DATABASE.make_engine
alembic_config = DATABASE.alembic_config
migrate_engine = DATABASE.migrate_engine
migrate = DATABASE.migrate

__all__ = [
    "DATABASE",
    "WRITE_OPTION",
    "alembic_config",
    "ensure_sqlite_dir",
    "is_sqlite",
    "make_engine",
    "migrate",
    "migrate_engine",
]
