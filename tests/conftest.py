"""Fixtures shared by every tier: real servers for integration and end-to-end tests."""

from collections.abc import AsyncIterator, Iterator

import nats
import pytest

from tests import servers


def _server(factory: object) -> Iterator[str]:
    cm = factory()  # type: ignore[operator]
    try:
        url = cm.__enter__()
    except servers.SkipServer as exc:
        pytest.skip(str(exc))
    try:
        yield url
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """URL of a real NATS server with JetStream."""
    yield from _server(servers.nats_server)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy asyncpg URL of a real Postgres database."""
    yield from _server(servers.postgres_server)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server."""
    yield from _server(servers.redis_server)


@pytest.fixture
async def clean_nats(nats_url: str) -> AsyncIterator[str]:
    """Yield the NATS URL after deleting every stream and KV bucket, so each test starts empty."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for name in await js.streams_info():
            await js.delete_stream(name.config.name)
    finally:
        await nc.close()
    yield nats_url
