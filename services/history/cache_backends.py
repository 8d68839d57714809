"""Where cached replies and version counters live: Redis, or an in-process LRU.

A version counter that does not exist yet is seeded with a random 62-bit
number rather than 0, so a counter that expired, was evicted or was lost in a
Redis restart never comes back to a value that still names old entries.

On Redis a read is one round trip and so is a write's bump: two small Lua
scripts (the entry's key is made of the counters the script reads, so the
script builds it; one Redis, not a cluster, runs them). Each Redis command
costs this process about 70 µs of CPU in the client.
"""

import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

# (key, ttl in seconds or None for a counter that never expires)
VersionKey = tuple[str, int | None]
# KEYS: the counters an entry depends on; ARGV: the entry key's prefix, its digest.
# Returns the counters as stored and the entry (nil unless every counter is a number).
LOOKUP = """
local versions = redis.call('MGET', unpack(KEYS))
for _, v in ipairs(versions) do
  if not v or not tonumber(v) then
    versions[#versions + 1] = false
    return versions
  end
end
local entry = ARGV[1] .. table.concat(versions, '.') .. ':' .. ARGV[2]
versions[#versions + 1] = redis.call('GET', entry)
return versions
"""
# KEYS: counters; ARGV: a seed and a ttl ('' for none) per counter. Overwrites only a
# missing counter with its seed (NX), then adds one and renews the ttl.
BUMP = """
for i, key in ipairs(KEYS) do
  local ttl = ARGV[2 * i]
  if ttl == '' then
    redis.call('SET', key, ARGV[2 * i - 1], 'NX')
  else
    redis.call('SET', key, ARGV[2 * i - 1], 'NX', 'EX', ttl)
  end
  redis.call('INCR', key)
  if ttl ~= '' then
    redis.call('EXPIRE', key, ttl)
  end
end
return 0
"""


def seed() -> int:
    """Return a fresh random start for a version counter."""
    return secrets.randbits(62)


def entry_key(prefix: str, versions: Sequence[int], digest: str) -> str:
    """Name the entry of ``digest`` under these counters."""
    return f"{prefix}{'.'.join(str(v) for v in versions)}:{digest}"


class CacheBackend(Protocol):
    """Key-value operations the cache needs; a failing call raises."""

    async def lookup(
        self, keys: Sequence[VersionKey], prefix: str, digest: str
    ) -> tuple[list[int], bytes | None]:
        """Return the counters (seeding the missing ones) and the entry they name, if any."""

    async def versions(self, keys: Sequence[VersionKey]) -> list[int]:
        """Return the counters, seeding the missing ones."""

    async def bump(self, keys: Sequence[VersionKey]) -> None:
        """Advance the counters, seeding the missing ones first."""

    async def get(self, key: str) -> bytes | None:
        """Return a stored value, or None."""

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        """Store a value for ``ttl`` seconds."""

    async def delete(self, key: str) -> None:
        """Forget a value."""

    async def aclose(self) -> None:
        """Release connections."""


class RedisBackend:
    """Shared by every replica: versions are Redis counters, entries expire by TTL."""

    def __init__(self, url: str, *, timeout: float, max_connections: int) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        # No client-side retries: a failed call falls back to the database at once.
        self.redis = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        self._lookup = self.redis.register_script(LOOKUP)
        self._bump = self.redis.register_script(BUMP)

    async def lookup(
        self, keys: Sequence[VersionKey], prefix: str, digest: str
    ) -> tuple[list[int], bytes | None]:
        """Return the counters and the entry they name, in one round trip (two more to seed)."""
        found: list[Any] = await self._lookup(keys=[key for key, _ in keys], args=[prefix, digest])
        *raw, entry = found
        if all(_is_int(value) for value in raw):
            return [int(value) for value in raw], _bytes(entry)
        versions = await self.versions(keys)
        return versions, await self.get(entry_key(prefix, versions, digest))

    async def versions(self, keys: Sequence[VersionKey]) -> list[int]:
        """Return the counters, seeding the missing ones (two round trips at most)."""
        raw: list[Any] = await self.redis.mget([key for key, _ in keys])
        missing = [i for i, value in enumerate(raw) if not _is_int(value)]
        if missing:
            pipe = self.redis.pipeline(transaction=False)
            for i in missing:
                key, ttl = keys[i]
                # Overwrites only a value that is not a counter (NX would keep the garbage).
                pipe.set(key, seed(), ex=ttl, nx=raw[i] is None)
                pipe.get(key)
            answers = await pipe.execute()
            for i, value in zip(missing, answers[1::2], strict=True):
                raw[i] = value
        return [int(value) for value in raw]

    async def bump(self, keys: Sequence[VersionKey]) -> None:
        """Seed the missing counters and add one to each, in one round trip."""
        args: list[Any] = []
        for _, ttl in keys:
            args += [seed(), "" if ttl is None else ttl]
        await self._bump(keys=[key for key, _ in keys], args=args)

    async def get(self, key: str) -> bytes | None:
        """Return a stored value, or None."""
        return _bytes(await self.redis.get(key))

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        """Store a value for ``ttl`` seconds."""
        await self.redis.set(key, value, ex=ttl)

    async def delete(self, key: str) -> None:
        """Forget a value."""
        await self.redis.delete(key)

    async def aclose(self) -> None:
        """Close the client and its pool."""
        await self.redis.aclose(close_connection_pool=True)


def _bytes(value: object) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _is_int(value: object) -> bool:
    try:
        int(value)  # type: ignore[call-overload]  # bytes or None from Redis
    except (TypeError, ValueError):
        return False
    return True


class MemoryBackend:
    """An LRU of bounded size in this process: correct only while one replica runs."""

    async def lookup(
        self, keys: Sequence[VersionKey], prefix: str, digest: str
    ) -> tuple[list[int], bytes | None]:
        """Return the counters (seeding the missing ones) and the entry they name, if any."""
        versions = await self.versions(keys)
        return versions, await self.get(entry_key(prefix, versions, digest))

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[str, tuple[float | None, bytes | int]] = OrderedDict()

    def _read(self, key: str) -> bytes | int | None:
        found = self.entries.get(key)
        if found is None:
            return None
        expires, value = found
        if expires is not None and expires <= time.monotonic():
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return value

    def _write(self, key: str, value: bytes | int, ttl: int | None) -> None:
        expires = None if ttl is None else time.monotonic() + ttl
        self.entries[key] = (expires, value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    async def versions(self, keys: Sequence[VersionKey]) -> list[int]:
        """Return the counters, seeding the missing ones."""
        out = []
        for key, ttl in keys:
            value = self._read(key)
            if not isinstance(value, int):
                value = seed()
                self._write(key, value, ttl)
            out.append(value)
        return out

    async def bump(self, keys: Sequence[VersionKey]) -> None:
        """Advance the counters, seeding the missing ones first."""
        for key, ttl in keys:
            value = self._read(key)
            self._write(key, (value if isinstance(value, int) else seed()) + 1, ttl)

    async def get(self, key: str) -> bytes | None:
        """Return a stored value, or None."""
        value = self._read(key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        """Store a value for ``ttl`` seconds."""
        self._write(key, value, ttl)

    async def delete(self, key: str) -> None:
        """Forget a value."""
        self.entries.pop(key, None)

    async def aclose(self) -> None:
        """Drop everything."""
        self.entries.clear()
