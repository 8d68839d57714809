"""The testcontainers path for real: Postgres, Redis and NATS in containers, used for real.

The other integration tests take their servers from ``CHATBUS_TEST_*_URL`` or a
local binary first; these ignore both and start each server as a container
(the locally built image when there is one, see ``tests/servers.py``), so the
fallback works when neither is there. Skipped, with the reason, without a
Docker engine.
"""

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack

import nats
import pytest
import redis.asyncio as redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.history.models import DATABASE, SCHEMA
from tests import servers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
TABLES = text("SELECT table_name FROM information_schema.tables WHERE table_schema = :schema")


def _container(factory: Callable[[], AbstractContextManager[str]]) -> Iterator[str]:
    with ExitStack() as stack:
        try:
            url = stack.enter_context(factory())
        except servers.SkipServer as exc:
            pytest.skip(str(exc))
        yield url


@pytest.fixture(scope="module")
def postgres_container() -> Iterator[str]:
    """A Postgres container's asyncpg URL."""
    yield from _container(servers.postgres_container)


@pytest.fixture(scope="module")
def redis_container() -> Iterator[str]:
    """A Redis container's URL."""
    yield from _container(servers.redis_container)


@pytest.fixture(scope="module")
def nats_container() -> Iterator[str]:
    """A NATS container's URL, JetStream on."""
    yield from _container(servers.nats_container)


async def test_history_migrates_on_a_postgres_container(postgres_container: str) -> None:
    await DATABASE.migrate(postgres_container)
    await DATABASE.migrate(postgres_container)  # a second run finds nothing to do

    engine = create_async_engine(postgres_container)
    try:
        async with engine.connect() as conn:
            tables = set((await conn.execute(TABLES, {"schema": SCHEMA})).scalars())
            version = text(f"SELECT version_num FROM {SCHEMA}.alembic_version")
            versions = (await conn.execute(version)).scalars().all()
    finally:
        await engine.dispose()
    assert {"sessions", "messages", "alembic_version"} <= tables, tables
    assert len(versions) == 1, versions


async def test_redis_container_round_trip(redis_container: str) -> None:
    client = redis.Redis.from_url(redis_container)
    key = f"chatbus-test:{uuid.uuid4().hex}"
    try:
        assert await client.set(key, "hello", ex=60)
        assert await client.get(key) == b"hello"
        assert await client.delete(key) == 1
        assert await client.get(key) is None
    finally:
        await client.aclose()


async def test_nats_container_keeps_a_jetstream_message(nats_container: str) -> None:
    name = f"CONTAINER_{uuid.uuid4().hex[:8].upper()}"
    subject = f"{name.lower()}.events"
    nc = await nats.connect(nats_container)
    try:
        js = nc.jetstream()
        await js.add_stream(name=name, subjects=[subject])
        ack = await js.publish(subject, b"stored", headers={"Nats-Msg-Id": "one"})
        again = await js.publish(subject, b"stored", headers={"Nats-Msg-Id": "one"})
        stored = await js.get_msg(name, ack.seq)
        info = await js.stream_info(name)
    finally:
        await nc.close()
    assert ack.stream == name and ack.seq == 1
    assert again.duplicate and again.seq == 1
    assert stored.data == b"stored"
    assert info.state.messages == 1
