"""History's rows read the same through SQLAlchemy and through runtime.sql, on both backends.

Rows stored before the request path left SQLAlchemy (and rows a migration or a
tool writes with it) must read back unchanged through ``services.runtime.sql``,
and the other way round.
"""

import uuid
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from contracts.base import utcnow
from services.history.models import DATABASE, SCHEMA, messages, sessions
from services.history.store import Store
from services.runtime.sql import IntegrityError, database
from tests.databases import BACKENDS
from tests.integration.test_history_database import DB

pytestmark = pytest.mark.integration


@pytest.fixture(params=BACKENDS)
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> str:
    url = await DB.fresh_url(str(request.param), tmp_path, request)
    await DATABASE.migrate(url)
    return url


async def test_rows_written_by_sqlalchemy_read_back_through_runtime_sql(
    database_url: str,
) -> None:
    now = utcnow()
    sid, mid, job = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    engine = DATABASE.make_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(sessions).values(
                    id=sid, user_id="u", persona="p", status="active", created_at=now,
                    updated_at=now, tail_job_id=job,
                )
            )
            await conn.execute(
                insert(messages).values(
                    id=mid, session_id=sid, user_id="u", role="user", content="héllo",
                    created_at=now, job_id=job,
                )
            )
    finally:
        await engine.dispose()

    sql = database(database_url, schema=SCHEMA)
    try:
        async with Store(sql).read() as tx:
            session = await tx.get_session(sid)
            [message] = await tx.list_messages(sid, after=None, limit=5)
        assert session is not None and session.created_at == now and session.id == sid
        assert message.id == mid and message.job_id == job and message.created_at == now
        assert message.content == "héllo"
        # Lists of ids and times go in as parameters the same way on both backends.
        rows = await sql.fetch(
            "SELECT id FROM {s}.messages WHERE job_id {any $1 uuid} AND created_at <= $2",
            [job, uuid.uuid4()], now,
        )
        assert [uuid.UUID(str(r[0]).replace("-", "")) for r in rows] == [mid]
        with pytest.raises(IntegrityError):
            async with sql.write() as w:
                await w.execute(
                    "INSERT INTO {s}.messages (id, session_id, user_id, role, content, "
                    "created_at, job_id) VALUES ($1, $2, 'u', 'user', 'again', $3, $4)",
                    uuid.uuid4(), sid, now, job,
                )
    finally:
        await sql.close()


async def test_rows_written_through_runtime_sql_read_back_through_sqlalchemy(
    database_url: str,
) -> None:
    now = utcnow()
    sid = uuid.uuid4()
    sql = database(database_url, schema=SCHEMA)
    try:
        async with sql.write() as tx:
            await tx.execute(
                "INSERT INTO {s}.sessions (id, user_id, persona, status, created_at, "
                "updated_at) VALUES ($1, 'u', 'p', 'active', $2, $2)",
                sid, now,
            )
        assert await sql.execute("UPDATE {s}.sessions SET title = $2 WHERE id = $1", sid, "t") == 1
    finally:
        await sql.close()
    engine = DATABASE.make_engine(database_url)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(select(sessions).where(sessions.c.id == sid))).one()
    finally:
        await engine.dispose()
    assert (row.id, row.created_at, row.title) == (sid, now, "t")
