"""Cache-aside for history reads, invalidated by version counters, degrading to the database.

Every entry key embeds the counters it depends on: a global epoch plus either
the user's counter (session lists, the feed) or the session's (a session, its
message pages). A write commits, then bumps the counters it touched before it
replies, so a read that starts after the reply, in any replica sharing the
Redis, computes a key no stale entry was ever stored under. Old entries are
never deleted; their TTL bounds the memory they hold.

Redis failing or slow moves the cache to DOWN: reads go to the database and
writes skip their bump. A background probe then moves it to RECOVERING (writes
bump again, reads still skip) and bumps the epoch, which retires every entry
written before the outage, whatever writes missed their bump; then UP.
"""

import asyncio
import enum
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar
from uuid import UUID

import structlog
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from services.history.cache_backends import CacheBackend, VersionKey, entry_key
from services.runtime.logging import spawn

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
FAILURES = (RedisError, OSError, TimeoutError)


class State(enum.Enum):
    """Whether the cache may be read and must be invalidated."""

    UP = "up"
    DOWN = "down"
    RECOVERING = "recovering"


class CacheMetrics:
    """Counters of one service's cache, in that service's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.hits = Counter(
            "chatbus_cache_hits", "Reads answered from the cache", ["kind"], registry=registry
        )
        self.misses = Counter(
            "chatbus_cache_misses", "Reads the cache did not hold", ["kind"], registry=registry
        )
        self.fallbacks = Counter(
            "chatbus_cache_fallbacks",
            "Reads sent to the database because the cache was unavailable",
            ["kind"],
            registry=registry,
        )
        self.corrupt = Counter(
            "chatbus_cache_corrupt_entries", "Entries dropped because they failed to decode",
            registry=registry,
        )


class Unavailable(Exception):
    """The cache backend failed or timed out."""


class Cache:
    """Serve reads through the backend with single-flight loads and versioned keys."""

    def __init__(
        self,
        backend: CacheBackend,
        metrics: CacheMetrics,
        *,
        ttl: int = 300,
        timeout: float = 0.1,
        retry_interval: float = 1.0,
        namespace: str = "chatbus:history",
        logger: Any = None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.ttl = ttl
        # A counter outlives the entries stored under it; it is seeded anew after expiring.
        self.version_ttl = 2 * ttl
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.namespace = namespace
        self.log = logger or structlog.get_logger("chatbus.history.cache")
        self.state = State.UP
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._probe: asyncio.Task[None] | None = None

    async def fetch(
        self,
        kind: str,
        *,
        user_id: str,
        session_id: UUID | None,
        params: dict[str, Any],
        model: type[M],
        load: Callable[[], Awaitable[M]],
    ) -> M:
        """Return the cached reply, or ``load()`` it (once per key at a time) and cache it."""
        if self.state is not State.UP:
            self.metrics.fallbacks.labels(kind).inc()
            return await load()
        scope = self._session_key(session_id) if session_id else self._user_key(user_id)
        prefix = f"{self.namespace}:e:{kind}:"
        digest = _digest([user_id, str(session_id), params])
        try:
            versions, raw = await self._guard(
                lambda: self.backend.lookup([(self._epoch_key(), None), scope], prefix, digest)
            )
        except Unavailable:
            self.metrics.fallbacks.labels(kind).inc()
            return await load()
        key = entry_key(prefix, versions, digest)
        if raw is not None:
            try:
                value = model.model_validate_json(raw)
            except ValidationError:
                # Never served: dropped and read again from the database.
                self.metrics.corrupt.inc()
                self.log.warning("dropped a cache entry that failed to decode", kind=kind)
                await self._quietly(lambda: self.backend.delete(key))
            else:
                self.metrics.hits.labels(kind).inc()
                return value
        return await self._single(key, lambda: self._load(kind, key, load))

    async def invalidate(self, user_id: str, session_ids: Iterable[UUID] = ()) -> None:
        """Retire the entries of a user's lists and of the given sessions; never raise."""
        await self.invalidate_many((user_id,), session_ids)

    async def invalidate_many(self, user_ids: Iterable[str], session_ids: Iterable[UUID]) -> None:
        """Retire the entries of users' lists and of sessions, in one round trip; never raise."""
        if self.state is State.DOWN:
            return  # the epoch bump on recovery retires what this write changed
        keys = [
            *(self._user_key(u) for u in user_ids), *(self._session_key(s) for s in session_ids)
        ]
        if not keys:
            return
        try:
            await self._guard(lambda: self.backend.bump(keys))
        except Unavailable:
            pass

    async def aclose(self) -> None:
        """Stop probing and release the backend."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        await self.backend.aclose()

    async def _load(self, kind: str, key: str, load: Callable[[], Awaitable[M]]) -> M:
        self.metrics.misses.labels(kind).inc()
        value = await load()
        if self.state is State.UP:
            # A write that failed to bump during the load left the cache DOWN: store nothing.
            body = value.model_dump_json().encode()
            await self._quietly(lambda: self.backend.set(key, body, self.ttl))
        return value

    async def _single(self, key: str, make: Callable[[], Awaitable[M]]) -> M:
        """Run one ``make()`` per key at a time; concurrent callers share its outcome."""
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(make())
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._land(key, done))
        # A caller that gives up (deadline) does not cancel the load the others wait for.
        result: M = await asyncio.shield(flight)
        return result

    def _land(self, key: str, flight: asyncio.Future[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: its callers got it; no "never retrieved" noise

    async def _guard(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await call()
        except FAILURES as exc:
            self._down(exc)
            raise Unavailable(repr(exc)) from exc

    async def _quietly(self, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            await self._guard(call)
        except Unavailable:
            pass

    def _down(self, exc: BaseException) -> None:
        if self.state is State.DOWN:
            return
        if self.state is State.UP:
            # One warning per outage; the probe logs the recovery.
            self.log.warning("cache unavailable; reading from the database", error=repr(exc))
        self.state = State.DOWN
        if self._probe is None or self._probe.done():
            self._probe = spawn(self._recover(), "history-cache-probe")

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval)
            if self.state is not State.DOWN:
                return
            # From here every write bumps again; the epoch bump covers those that did not.
            self.state = State.RECOVERING
            try:
                async with asyncio.timeout(self.timeout):
                    await self.backend.bump([(self._epoch_key(), None)])
            except FAILURES:
                self.state = State.DOWN
                continue
            if self.state is State.RECOVERING:
                self.state = State.UP
                self.log.info("cache available again; entries from before the outage retired")
                return

    def _epoch_key(self) -> str:
        return f"{self.namespace}:v:epoch"

    def _user_key(self, user_id: str) -> VersionKey:
        return f"{self.namespace}:v:u:{_digest(user_id)}", self.version_ttl

    def _session_key(self, session_id: UUID) -> VersionKey:
        return f"{self.namespace}:v:s:{session_id}", self.version_ttl


def _digest(value: object) -> str:
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()
