"""The database of the webhooks service: its schema, engine and migrations."""

from services.runtime.database import Database
from services.webhooks.models import SCHEMA

DATABASE = Database(
    schema=SCHEMA,
    package="services.webhooks",
    lock_key=0x77656268_6F6F6B31,  # "webhook1"
    write_option="webhooks_write",
)
WRITE_OPTION = DATABASE.write_option
make_engine = DATABASE.make_engine
migrate = DATABASE.migrate
