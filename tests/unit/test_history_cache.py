"""History reads through the cache: invalidation, single-flight, corrupt entries, outages.

The in-process LRU backend here; the integration tier runs replicas over real Redis.
"""

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from contracts.history import (
    ArchiveSession,
    DeleteSession,
    GetSession,
    ListFeed,
    ListMessages,
    ListSessions,
)
from services.history.cache import Cache, CacheMetrics, State
from services.history.cache_backends import MemoryBackend, VersionKey
from services.history.errors import NotFound
from services.history.outbox import Relay
from services.history.service import HistoryService
from services.history.store import Store
from tests.unit.test_history_service import (  # noqa: F401  (fixtures)
    META,
    RecordingPublisher,
    _append,
    _create,
    database_url_fixture,
    publisher_fixture,
    relay_fixture,
    service_fixture,
)


@dataclass
class RecordingLogger:
    """Keep log calls by level."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def warning(self, event: str, **_: Any) -> None:
        self.calls.append(("warning", event))

    def info(self, event: str, **_: Any) -> None:
        self.calls.append(("info", event))

    def of(self, level: str) -> list[str]:
        return [e for lvl, e in self.calls if lvl == level]


class Switchable(MemoryBackend):
    """An LRU that fails every call while ``down`` (entries survive, as in a network cut)."""

    def __init__(self) -> None:
        super().__init__(1000)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise RedisConnectionError("connection refused")

    async def versions(self, keys: Sequence[VersionKey]) -> list[int]:
        self._check()
        return await super().versions(keys)

    async def bump(self, keys: Sequence[VersionKey]) -> None:
        self._check()
        await super().bump(keys)

    async def get(self, key: str) -> bytes | None:
        self._check()
        return await super().get(key)

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        self._check()
        await super().set(key, value, ttl)


def count_queries(store: Store, table: str) -> list[str]:
    """Record every statement of ``store`` that reads ``table``."""
    seen: list[str] = []
    pattern = re.compile(rf"FROM (\{{s\}}\.)?{table}\b")
    render = store.sql.render

    def counting(template: str) -> str:
        if pattern.search(template):
            seen.append(template)
        return render(template)

    store.sql.render = counting  # type: ignore[method-assign]
    return seen


def sample(registry: CollectorRegistry, name: str, kind: str | None = None) -> float:
    labels = {"kind": kind} if kind else {}
    return registry.get_sample_value(name, labels) or 0.0


@dataclass
class Cached:
    service: HistoryService
    cache: Cache
    backend: Switchable
    registry: CollectorRegistry
    log: RecordingLogger


@pytest.fixture
async def cached(service: HistoryService, publisher: RecordingPublisher) -> AsyncIterator[Cached]:
    registry, log, backend = CollectorRegistry(), RecordingLogger(), Switchable()
    cache = Cache(
        backend, CacheMetrics(registry), timeout=0.5, retry_interval=0.02, logger=log
    )
    store = service.store
    try:
        yield Cached(HistoryService(store, cache, Relay(store, publisher), instance="c"),
                     cache, backend, registry, log)
    finally:
        await cache.aclose()


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_every_write_retires_exactly_what_it_changed(cached: Cached) -> None:
    svc, reg = cached.service, cached.registry
    a = await _create(svc, persona="a")
    b = await _create(svc, persona="b")
    await _append(svc, b, content="b0")
    reads: dict[str, Callable[[], Awaitable[Any]]] = {
        "sessions": lambda: svc.list_sessions(ListSessions(user_id="alice"), META),
        "feed": lambda: svc.list_feed(ListFeed(user_id="alice"), META),
        "a": lambda: svc.list_messages(ListMessages(user_id="alice", session_id=a.id), META),
        "b": lambda: svc.list_messages(ListMessages(user_id="alice", session_id=b.id), META),
        "get_b": lambda: svc.get_session(GetSession(user_id="alice", session_id=b.id), META),
    }
    first = {name: await read() for name, read in reads.items()}
    assert {name: await read() for name, read in reads.items()} == first
    assert sample(reg, "chatbus_cache_hits_total", "messages") == 2

    message, _ = await _append(svc, a, content="a0")

    after = {name: await read() for name, read in reads.items()}
    assert after["a"].items == (message,)
    assert after["feed"].items[0] == message
    assert [s.message_count for s in after["sessions"].items] == [1, 1]
    assert after["b"] == first["b"] and after["get_b"] == first["get_b"]
    # Session b's page and record were not retired by a write to session a.
    assert sample(reg, "chatbus_cache_hits_total", "messages") == 3
    assert sample(reg, "chatbus_cache_hits_total", "session") == 2

    await svc.archive_session(ArchiveSession(user_id="alice", session_id=b.id), META)
    got = await svc.get_session(GetSession(user_id="alice", session_id=b.id), META)
    assert got.session is not None and got.session.status == "archived"
    page = await svc.list_sessions(ListSessions(user_id="alice", status="active"), META)
    assert [s.id for s in page.items] == [a.id]

    await svc.delete_session(DeleteSession(user_id="alice", session_id=b.id), META)
    with pytest.raises(NotFound):
        await svc.list_messages(ListMessages(user_id="alice", session_id=b.id), META)
    with pytest.raises(NotFound):
        await svc.get_session(GetSession(user_id="alice", session_id=b.id), META)
    page = await svc.list_sessions(ListSessions(user_id="alice"), META)
    assert [s.id for s in page.items] == [a.id]


async def test_concurrent_misses_on_one_key_query_the_database_once(cached: Cached) -> None:
    svc = cached.service
    session = await _create(svc)
    await _append(svc, session, content="hello")
    queries = count_queries(svc.store, "messages")
    request = ListMessages(user_id="alice", session_id=session.id)

    pages = await asyncio.gather(*(svc.list_messages(request, META) for _ in range(50)))

    assert len(queries) == 1
    assert len({page.model_dump_json() for page in pages}) == 1
    assert pages[0].items[0].content == "hello"


async def test_a_corrupt_entry_is_dropped_and_read_again(cached: Cached) -> None:
    svc, reg = cached.service, cached.registry
    session = await _create(svc)
    await _append(svc, session, content="hello")
    request = ListMessages(user_id="alice", session_id=session.id)
    good = await svc.list_messages(request, META)
    entries = [k for k in cached.backend.entries if ":e:" in k]
    assert len(entries) == 1
    await cached.backend.set(entries[0], b'{"items": "not a page"', 60)

    assert await svc.list_messages(request, META) == good
    assert sample(reg, "chatbus_cache_corrupt_entries_total") == 1
    assert await cached.backend.get(entries[0]) == good.model_dump_json().encode()
    hits = sample(reg, "chatbus_cache_hits_total", "messages")
    assert await svc.list_messages(request, META) == good
    assert sample(reg, "chatbus_cache_hits_total", "messages") == hits + 1


async def test_outage_falls_back_once_logged_and_retires_entries_on_recovery(
    cached: Cached,
) -> None:
    svc, reg, log = cached.service, cached.registry, cached.log
    session = await _create(svc)
    request = ListMessages(user_id="alice", session_id=session.id)
    assert (await svc.list_messages(request, META)).items == ()  # cached, empty

    cached.backend.down = True
    message, _ = await _append(svc, session, content="written while the cache was down")
    for _ in range(5):
        assert (await svc.list_messages(request, META)).items == (message,)
    assert log.of("warning") == ["cache unavailable; reading from the database"]
    assert sample(reg, "chatbus_cache_fallbacks_total", "messages") == 5

    cached.backend.down = False
    await _until(lambda: cached.cache.state is State.UP)
    assert len(log.of("info")) == 1
    # The entry cached before the outage still exists, but the epoch bump retired it.
    assert (await svc.list_messages(request, META)).items == (message,)
    hits = sample(reg, "chatbus_cache_hits_total", "messages")
    assert (await svc.list_messages(request, META)).items == (message,)
    assert sample(reg, "chatbus_cache_hits_total", "messages") == hits + 1
    assert len(log.of("warning")) == 1


async def test_a_slow_cache_is_skipped_after_its_timeout(service: HistoryService) -> None:
    class Slow(MemoryBackend):
        async def versions(self, keys: Sequence[VersionKey]) -> list[int]:
            await asyncio.sleep(30)
            raise AssertionError("not reached")

    registry = CollectorRegistry()
    cache = Cache(Slow(10), CacheMetrics(registry), timeout=0.05, logger=RecordingLogger())
    svc = HistoryService(service.store, cache, Relay(service.store, RecordingPublisher()),
                         instance="slow")
    try:
        session = await _create(svc)
        page = await svc.list_sessions(ListSessions(user_id="alice"), META)
        assert [s.id for s in page.items] == [session.id]
        assert sample(registry, "chatbus_cache_fallbacks_total", "sessions") == 1
        assert cache.state is State.DOWN
    finally:
        await cache.aclose()


async def test_the_lru_stays_bounded() -> None:
    backend = MemoryBackend(5)
    for i in range(50):
        await backend.set(f"k{i}", b"v", 60)
    await backend.bump([(f"v{uuid.uuid4()}", 60)])
    assert len(backend.entries) == 5
    assert await backend.get("k49") == b"v" and await backend.get("k0") is None
