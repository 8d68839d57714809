"""History replicas sharing one Redis and one database: never stale, and Redis may go away."""

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from contracts.history import (
    ArchiveSession,
    DeleteSession,
    GetSession,
    ListFeed,
    ListMessages,
    ListSessions,
)
from services.history.app import make_cache
from services.history.cache import State
from services.history.config import Settings
from services.history.errors import NotFound
from services.history.models import DATABASE
from services.history.outbox import Relay
from services.history.service import HistoryService
from services.launcher.natsserver import free_port, wait_for_port
from tests.databases import BACKENDS
from tests.integration.test_history_database import DB
from tests.unit.test_history_cache import RecordingLogger, count_queries, sample
from tests.unit.test_history_service import META, RecordingPublisher, _append, _create, store_at

pytestmark = pytest.mark.integration


class RedisProcess:
    """A private redis-server this test may stop, pause and restart."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_for_port(self.port, 10), "redis-server did not start"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary for the outage tests")
    server = RedisProcess(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = await DB.fresh_url(request.param, tmp_path, request)
    await DATABASE.migrate(url)
    return url


@dataclass
class Replica:
    service: HistoryService
    registry: CollectorRegistry
    log: RecordingLogger

    def hits(self, kind: str) -> float:
        return sample(self.registry, "chatbus_cache_hits_total", kind)


@pytest.fixture
async def replicas(
    database_url: str,
) -> AsyncIterator[Callable[[str, str], Replica]]:
    """Build history replicas, each with its own engine, Redis client and metrics."""
    built: list[Replica] = []

    def build(redis_url: str, namespace: str) -> Replica:
        settings = Settings(
            database_url=database_url,
            redis_url=redis_url,
            cache_namespace=namespace,
            redis_timeout=1.0,  # generous: a loaded CI machine must not fake an outage
            redis_retry_interval=0.05,
        )
        registry, log = CollectorRegistry(), RecordingLogger()
        store = store_at(database_url)
        cache = make_cache(settings, registry, log)
        service = HistoryService(
            store, cache, Relay(store, RecordingPublisher()), instance=f"r{len(built)}"
        )
        built.append(Replica(service, registry, log))
        return built[-1]

    yield build
    for replica in built:
        await replica.service.cache.aclose()
        await replica.service.store.sql.close()


def _namespace() -> str:
    return f"test:{uuid.uuid4().hex}"


async def test_a_write_on_one_replica_is_read_at_once_on_another(
    replicas: Callable[[str, str], Replica], redis_url: str
) -> None:
    ns = _namespace()
    a, b = replicas(redis_url, ns).service, replicas(redis_url, ns)
    rb = b.service
    old = await _create(a)
    first, _ = await _append(a, old, content="first")

    def get(session_id: uuid.UUID) -> GetSession:
        return GetSession(user_id="alice", session_id=session_id)

    # B caches every kind of read, and serves the second round from Redis.
    for _ in range(2):
        assert [s.id for s in (await rb.list_sessions(ListSessions(user_id="alice"), META)).items]\
            == [old.id]
        assert (await rb.list_feed(ListFeed(user_id="alice"), META)).items == (first,)
        page = await rb.list_messages(ListMessages(user_id="alice", session_id=old.id), META)
        assert page.items == (first,)
        assert (await rb.get_session(get(old.id), META)).session.message_count == 1  # type: ignore[union-attr]
    assert b.hits("sessions") == b.hits("feed") == b.hits("messages") == b.hits("session") == 1

    new = await _create(a)  # archives ``old``
    listed = await rb.list_sessions(ListSessions(user_id="alice"), META)
    assert [(s.id, s.status) for s in listed.items] == [(new.id, "active"), (old.id, "archived")]
    assert (await rb.get_session(get(old.id), META)).session.status == "archived"  # type: ignore[union-attr]

    second, _ = await _append(a, new, content="second")
    assert (await rb.list_feed(ListFeed(user_id="alice"), META)).items == (second, first)
    page = await rb.list_messages(ListMessages(user_id="alice", session_id=new.id), META)
    assert page.items == (second,)
    assert (await rb.get_session(get(new.id), META)).session.message_count == 1  # type: ignore[union-attr]

    await a.archive_session(ArchiveSession(user_id="alice", session_id=new.id), META)
    active = await rb.list_sessions(ListSessions(user_id="alice", status="active"), META)
    assert active.items == ()
    assert (await rb.get_session(get(new.id), META)).session.status == "archived"  # type: ignore[union-attr]

    await a.delete_session(DeleteSession(user_id="alice", session_id=old.id), META)
    with pytest.raises(NotFound):
        await rb.get_session(get(old.id), META)
    with pytest.raises(NotFound):
        await rb.list_messages(ListMessages(user_id="alice", session_id=old.id), META)
    assert (await rb.list_feed(ListFeed(user_id="alice"), META)).items == (second,)
    listed = await rb.list_sessions(ListSessions(user_id="alice"), META)
    assert [s.id for s in listed.items] == [new.id]


async def test_concurrent_misses_query_once_and_corrupt_entries_are_reread(
    replicas: Callable[[str, str], Replica], redis_url: str
) -> None:
    ns = _namespace()
    replica = replicas(redis_url, ns)
    svc = replica.service
    session = await _create(svc)
    await _append(svc, session, content="hello")
    queries = count_queries(svc.store, "messages")
    request = ListMessages(user_id="alice", session_id=session.id)

    pages = await asyncio.gather(*(svc.list_messages(request, META) for _ in range(50)))
    assert len(queries) == 1
    assert len({page.model_dump_json() for page in pages}) == 1

    client = aioredis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(f"{ns}:e:messages:*")]
        assert len(keys) == 1
        await client.set(keys[0], b"\x00 not json", ex=60)
        assert await svc.list_messages(request, META) == pages[0]
        assert len(queries) == 2
        assert sample(replica.registry, "chatbus_cache_corrupt_entries_total") == 1
        assert await client.get(keys[0]) == pages[0].model_dump_json().encode()
    finally:
        await client.aclose()


async def _until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_reads_survive_redis_stopping_and_use_it_again_once_back(
    replicas: Callable[[str, str], Replica], private_redis: RedisProcess
) -> None:
    ns = _namespace()
    a, b = replicas(private_redis.url, ns), replicas(private_redis.url, ns)
    session = await _create(a.service)
    request = ListMessages(user_id="alice", session_id=session.id)
    assert (await b.service.list_messages(request, META)).items == ()

    private_redis.stop()
    message, _ = await _append(a.service, session, content="written during the outage")
    for _ in range(5):
        assert (await b.service.list_messages(request, META)).items == (message,)
    for replica in (a, b):
        assert replica.log.of("warning") == ["cache unavailable; reading from the database"]
    assert sample(b.registry, "chatbus_cache_fallbacks_total", "messages") == 5

    private_redis.start()
    await _until(lambda: a.service.cache.state is State.UP and b.service.cache.state is State.UP)
    for replica in (a, b):
        assert len(replica.log.of("info")) == 1 and len(replica.log.of("warning")) == 1
    assert (await b.service.list_messages(request, META)).items == (message,)
    hits = b.hits("messages")
    assert (await b.service.list_messages(request, META)).items == (message,)
    assert b.hits("messages") == hits + 1


async def test_entries_from_before_an_outage_are_retired_when_redis_kept_them(
    replicas: Callable[[str, str], Replica], private_redis: RedisProcess
) -> None:
    ns = _namespace()
    a, b = replicas(private_redis.url, ns), replicas(private_redis.url, ns)
    session = await _create(a.service)
    request = ListMessages(user_id="alice", session_id=session.id)
    assert (await b.service.list_messages(request, META)).items == ()

    # Redis stops answering but keeps its data; only A notices (its bump times out).
    admin = aioredis.from_url(private_redis.url)
    try:
        await admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")  # type: ignore[no-untyped-call]
        message, _ = await _append(a.service, session, content="its bump never landed")
        assert a.service.cache.state is not State.UP
        await _until(lambda: a.service.cache.state is State.UP)
    finally:
        await admin.aclose()

    # B never saw the outage; the epoch A bumped on recovery retired B's entry.
    assert b.service.cache.state is State.UP
    assert (await b.service.list_messages(request, META)).items == (message,)
    assert b.log.of("warning") == []
