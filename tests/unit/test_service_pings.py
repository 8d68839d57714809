"""A ping answers only when the service reaches its database: readiness means something."""

from pathlib import Path

import pytest

from contracts.base import Ping
from services.history.errors import Unavailable as HistoryUnavailable
from services.history.models import DATABASE as HISTORY_DATABASE
from services.memory.errors import Unavailable as MemoryUnavailable
from services.memory.models import SCHEMA as MEMORY_SCHEMA
from services.memory.service import MemoryService
from services.memory.store import Store as MemoryStore
from services.runtime.sql import database
from tests.unit.test_history_service import META, RecordingPublisher, build_service, store_at
from tests.unit.test_memory_service import FakeEvents, FakeHistory, FakeModel


def unreachable(tmp_path: Path) -> str:
    """Return the URL of a SQLite file that opens but answers no query: it is no database."""
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a SQLite database file" * 100)
    return f"sqlite+aiosqlite:///{broken}"


async def test_history_pong_needs_its_database(tmp_path: Path) -> None:
    good = f"sqlite+aiosqlite:///{tmp_path}/history.db"
    await HISTORY_DATABASE.migrate(good)
    for url, answers in ((good, True), (unreachable(tmp_path), False)):
        store = store_at(url)
        service = build_service(store, RecordingPublisher())
        try:
            if answers:
                assert (await service.ping(Ping(), META)).service == "history"
            else:
                with pytest.raises(HistoryUnavailable, match="database unreachable"):
                    await service.ping(Ping(), META)
        finally:
            await store.sql.close()


async def test_memory_pong_needs_its_database(tmp_path: Path) -> None:
    sql = database(unreachable(tmp_path), schema=MEMORY_SCHEMA)
    service = MemoryService(
        MemoryStore(sql), FakeHistory(), FakeModel(), FakeEvents(),
        instance="unit", max_per_session=10, heartbeat_interval=0.01,
    )
    try:
        with pytest.raises(MemoryUnavailable, match="database unreachable"):
            await service.ping(Ping(), META)
    finally:
        await sql.close()
