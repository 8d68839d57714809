"""History's database layer on real SQLite and Postgres: rules and migrations.

The rule tests are the unit tier's, collected again here with ``database_url``
pointing at each backend in turn.
"""

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text

from contracts.base import utcnow
from services.history.models import DATABASE, sessions
from tests.databases import BACKENDS, ServiceDatabase
from tests.unit.test_history_admission import (  # noqa: F401  (collected again here)
    test_a_failed_announcement_is_left_to_the_timer,
    test_a_job_left_by_a_crash_after_the_commit_is_published_by_the_timer,
    test_an_admitted_job_is_announced_once_on_chat_requested,
    test_appends_arriving_together_hold_the_limit_exactly,
    test_delete_names_only_the_unfinished_jobs,
    test_each_job_follows_the_sessions_unfinished_tail,
    test_end_job_is_idempotent_and_only_the_owners,
    test_follows_is_exact_within_one_batch,
    test_interrupt_names_the_unfinished_jobs_to_cancel,
    test_jobs_unfinished_for_a_day_stop_counting,
    test_messages_per_minute_are_refused_until_the_oldest_leaves_the_window,
    test_reject_refuses_while_the_session_has_an_unfinished_job,
    test_too_many_unfinished_jobs_are_refused_and_nothing_is_stored,
    test_two_replicas_appending_to_one_session_keep_one_order,
    test_two_replicas_at_the_limit_admit_exactly_the_limit,
)
from tests.unit.test_history_cache import (  # noqa: F401  (collected again here)
    cached,
    test_concurrent_misses_on_one_key_query_the_database_once,
    test_every_write_retires_exactly_what_it_changed,
)
from tests.unit.test_history_outbox import (  # noqa: F401  (collected again here)
    test_a_dead_relays_claim_expires_and_another_takes_it,
    test_committed_events_survive_a_crash_before_publishing,
    test_concurrent_relays_publish_each_event_once,
    test_rolled_back_writes_emit_nothing,
)
from tests.unit.test_history_service import (  # noqa: F401  (collected again here)
    publisher_fixture,
    relay_fixture,
    service_fixture,
    test_append_is_idempotent_on_job_and_role,
    test_archive_is_announced_once_and_repeats_are_no_ops,
    test_archived_session_refuses_user_but_keeps_assistant_messages,
    test_concurrent_appends_share_transactions_and_keep_their_own_answers,
    test_concurrent_creates_leave_exactly_one_active_session,
    test_concurrent_duplicate_appends_store_one_message,
    test_create_archives_previous_session_of_same_persona,
    test_create_succeeds_when_the_event_cannot_be_published,
    test_delete_removes_messages_and_announces_it,
    test_feed_pages_across_sessions_stay_stable_while_messages_arrive,
    test_feed_refuses_a_bad_or_foreign_cursor,
    test_malformed_cursor_is_invalid,
    test_message_pages_stay_stable_while_messages_arrive,
    test_session_pages_stay_stable_and_filter,
    test_sessions_are_invisible_to_other_users,
    test_timestamps_come_back_aware_utc,
    test_two_replicas_appending_one_job_store_it_once,
)

pytestmark = pytest.mark.integration
HEAD = "0003"


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
                insert(sessions).values(
                    id=uuid.uuid4(),
                    user_id="u",
                    persona="p",
                    status="active",
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
    finally:
        await engine.dispose()

    await DATABASE.migrate(database_url)

    assert await _scalar(database_url, select(func.count()).select_from(sessions)) == 1
    assert await _scalar(database_url, f"SELECT version_num FROM {_version_table(backend)}") == (
        HEAD
    )


async def test_replicas_migrating_at_once_do_not_race(database_url: str, backend: str) -> None:
    await asyncio.gather(*(DATABASE.migrate(database_url) for _ in range(4)))
    assert await _scalar(database_url, f"SELECT count(*) FROM {_version_table(backend)}") == 1


async def test_sqlite_file_is_shared_with_another_services_alembic(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/missing/dir/shared.db"
    engine = DATABASE.make_engine(url)
    (tmp_path / "missing" / "dir").mkdir(parents=True)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
            await conn.execute(text("INSERT INTO alembic_version VALUES ('other-service')"))
    finally:
        await engine.dispose()

    await DATABASE.migrate(url)

    assert await _scalar(url, "SELECT version_num FROM alembic_version") == "other-service"
    assert await _scalar(url, "SELECT version_num FROM history_alembic_version") == HEAD
    assert await _scalar(url, "SELECT count(*) FROM messages") == 0


async def test_migrate_creates_the_sqlite_directory(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/a/b/history.db"
    await DATABASE.migrate(url)
    assert (tmp_path / "a" / "b" / "history.db").exists()


async def test_migrate_leaves_the_sqlite_file_in_wal_mode(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/history.db"
    await DATABASE.migrate(url)
    # Kept in the file: a fresh connection, which sets no journal mode, reads it back.
    assert await _scalar(url, "PRAGMA journal_mode") == "wal"


async def test_downgrade_and_upgrade_again(database_url: str, backend: str) -> None:
    await DATABASE.migrate(database_url)
    await DB.downgrade(database_url, "0001")
    await DATABASE.migrate(database_url)
    table = "history.outbox" if backend == "postgres" else "outbox"
    assert await _scalar(database_url, f"SELECT count(*) FROM {table}") == 0
    assert await _scalar(database_url, f"SELECT version_num FROM {_version_table(backend)}") == (
        HEAD
    )


async def test_pooler_url_turns_statement_caches_off(postgres_url: str) -> None:
    engine = DATABASE.make_engine(f"{postgres_url}?prepared_statement_cache_size=0")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None and raw._stmt_cache.get_max_size() == 0
    finally:
        await engine.dispose()
