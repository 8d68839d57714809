"""Fixtures shared by every tier: real servers for integration and end-to-end tests."""

from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.msg import Msg

from tests import servers

STREAM_ADVISORY = "$JS.EVENT.ADVISORY.STREAM."


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
    """Yield the NATS URL after deleting every stream and KV bucket, so each test starts empty.

    A server shared with another test session is wiped by that session's tests too, in the
    middle of this one: services lose their streams and consumers and wait for messages that
    are gone, and the test times out far from the cause. A stream deleted while the test runs
    fails it at teardown by name.
    """
    nc = await nats.connect(nats_url)
    live: set[str] = set()  # created since the wipe below, by the test or its services
    lost: list[str] = []

    async def advisory(msg: Msg) -> None:
        kind, _, stream = msg.subject.removeprefix(STREAM_ADVISORY).partition(".")
        if kind == "CREATED":
            live.add(stream)
        elif kind == "DELETED" and stream in live:  # not a late advisory of the wipe
            live.discard(stream)
            lost.append(stream)

    try:
        await nc.subscribe(f"{STREAM_ADVISORY}*.*", cb=advisory)
        js = nc.jetstream()
        for name in await js.streams_info():
            await js.delete_stream(name.config.name)
        yield nats_url
        await nc.flush()
        if lost:
            pytest.fail(
                f"streams deleted by another client of {nats_url} while the test ran: "
                f"{', '.join(lost)}. Is another test session using this server? Give each "
                "session a server of its own (without CHATBUS_TEST_NATS_URL one is started)."
            )
    finally:
        await nc.close()
