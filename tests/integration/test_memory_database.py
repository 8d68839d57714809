"""Memory's database layer on real SQLite and Postgres: rules and migrations.

The rule tests are the unit tier's, collected again here with ``database_url``
pointing at each backend in turn.
"""

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from contracts.base import utcnow
from services.history.models import DATABASE as HISTORY_DATABASE
from services.memory.models import DATABASE, memories
from tests.databases import BACKENDS, ServiceDatabase
from tests.unit.test_memory_service import (  # noqa: F401  (collected again here)
    test_a_deleted_session_forgets_its_memories_and_stays_forgotten,
    test_a_session_deleted_before_it_was_archived_is_never_remembered,
    test_an_archived_session_is_remembered_once,
    test_an_empty_session_is_recorded_without_asking_the_model,
    test_an_invalid_model_answer_fails_the_attempt_and_stores_nothing,
    test_an_unpublished_event_is_published_on_redelivery_without_the_model,
    test_another_user_sees_and_deletes_nothing,
    test_concurrent_deliveries_of_one_event_store_it_once,
    test_delete_removes_one_memory_and_a_repeat_is_not_found,
    test_memories_come_back_with_aware_utc_times,
    test_recall_filters_by_persona_and_text_and_pages,
    world_fixture,
)

pytestmark = pytest.mark.integration
HEAD = "0001"


DB = ServiceDatabase(DATABASE)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return await DB.fresh_url(backend, tmp_path, request)


_scalar = DB.scalar
_version_table = DB.version_table


async def test_second_migration_is_a_no_op(database_url: str, backend: str) -> None:
    await DATABASE.migrate(database_url)
    engine = DATABASE.make_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(memories).values(
                    id=uuid.uuid4(),
                    user_id="u",
                    session_id=uuid.uuid4(),
                    persona="p",
                    content="The user likes tea",
                    created_at=utcnow(),
                )
            )
    finally:
        await engine.dispose()

    await DATABASE.migrate(database_url)

    assert await _scalar(database_url, select(func.count()).select_from(memories)) == 1
    version = f"SELECT version_num FROM {_version_table(backend)}"
    assert await _scalar(database_url, version) == HEAD


async def test_replicas_migrating_at_once_do_not_race(database_url: str, backend: str) -> None:
    await asyncio.gather(*(DATABASE.migrate(database_url) for _ in range(4)))
    assert await _scalar(database_url, f"SELECT count(*) FROM {_version_table(backend)}") == 1


async def test_tables_live_in_the_memory_schema_on_postgres(postgres_url: str) -> None:
    await DB.drop(postgres_url)
    await DATABASE.migrate(postgres_url)
    found = await _scalar(
        postgres_url,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'memory' "
        "AND table_name IN ('memories', 'processed_sessions', 'alembic_version')",
    )
    assert found == 3


async def test_the_sqlite_file_is_shared_with_history(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/shared/chatbus.db"
    await HISTORY_DATABASE.migrate(url)
    await DATABASE.migrate(url)
    await HISTORY_DATABASE.migrate(url)  # each service sees only its own version table

    assert await _scalar(url, "SELECT version_num FROM memory_alembic_version") == HEAD
    assert await _scalar(url, "SELECT count(*) FROM history_alembic_version") == 1
    assert await _scalar(url, "SELECT count(*) FROM memories") == 0
    assert await _scalar(url, "SELECT count(*) FROM messages") == 0


async def test_downgrade_and_upgrade_again(database_url: str, backend: str) -> None:
    await DATABASE.migrate(database_url)
    await DB.downgrade(database_url, "base")
    await DATABASE.migrate(database_url)
    table = "memory.processed_sessions" if backend == "postgres" else "processed_sessions"
    assert await _scalar(database_url, f"SELECT count(*) FROM {table}") == 0
    version = f"SELECT version_num FROM {_version_table(backend)}"
    assert await _scalar(database_url, version) == HEAD
