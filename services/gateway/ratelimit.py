"""Messages per minute per user: a sliding window in a JetStream KV bucket, changed by CAS.

Each user's key holds the times of their latest accepted messages. Taking a
slot reads the key, drops the times older than the window, and writes the new
time back only if the key is still at the revision read (compare-and-set), so
every gateway replica counts against the same window. A refused message
writes nothing. Errors::

    RateError         the bucket could not be read or written (the bus maps it to 503)
    TooManyMessages   429 with Retry-After: the seconds until the oldest time leaves the window
"""

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import nats.errors
import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from starlette.exceptions import HTTPException

from contracts import subjects

MAX_CAS_ROUNDS = 50
log = structlog.get_logger("chatbus.gateway.ratelimit")


class RateError(Exception):
    """The rate bucket could not be read or written."""


@dataclass(frozen=True)
class RateDecision:
    """Whether a slot was taken, and if not, the seconds until one frees."""

    allowed: bool
    retry_after: float = 0.0


class SlidingWindow:
    """Take slots of per-key sliding windows kept in a KV bucket."""

    def __init__(self, kv: KeyValue, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.clock = clock

    async def take(self, key: str, limit: int, window: float) -> RateDecision:
        """Record one event under ``key`` unless ``limit`` happened in the last ``window`` s."""
        for _ in range(MAX_CAS_ROUNDS):
            times, revision = await self._read(key)
            now = self.clock()
            recent = sorted(t for t in times if now - window < t)
            if len(recent) >= limit:
                # One slot frees when the oldest of the newest ``limit`` times leaves the window.
                frees_at = recent[len(recent) - limit] + window
                return RateDecision(False, min(window, max(0.0, frees_at - now)))
            value = json.dumps([*recent, round(now, 3)])
            try:
                if revision is None:
                    await self.kv.create(key, value.encode())
                else:
                    await self.kv.update(key, value.encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue  # another replica took a slot meanwhile: count again
            except (nats.errors.Error, TimeoutError) as exc:
                raise RateError(f"rate bucket unavailable: {exc!r}") from exc
            return RateDecision(True)
        raise RateError(f"{key} kept changing under {MAX_CAS_ROUNDS} concurrent writers")

    async def _read(self, key: str) -> tuple[list[float], int | None]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:  # never written, expired, or deleted
            return [], None
        except (nats.errors.Error, TimeoutError) as exc:
            raise RateError(f"rate bucket unavailable: {exc!r}") from exc
        try:
            times = json.loads(entry.value or b"[]")
            return [float(t) for t in times], entry.revision
        except (ValueError, TypeError):
            return [], entry.revision  # unreadable: start the window afresh


class RateStore(Protocol):
    """Where the windows live: the gateway's bus."""

    async def take_rate(self, key: str, limit: int, window: float) -> RateDecision:
        """Take a slot of the window under ``key``."""
        ...


class TooManyMessages(HTTPException):
    """The user posted as many messages as allowed in the last minute."""

    def __init__(self, limit: int, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(
            429,
            f"over {limit} messages a minute; retry in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


async def limit_messages(store: RateStore, user_id: str, per_minute: int) -> None:
    """Count one message of the user, or raise :class:`TooManyMessages` (0 means no limit)."""
    if per_minute <= 0:
        return
    window = subjects.RATE_WINDOW_SECONDS
    decision = await store.take_rate(subjects.user_rate(user_id), per_minute, window)
    if not decision.allowed:
        log.info("too many messages a minute", limit=per_minute, retry_after=decision.retry_after)
        raise TooManyMessages(per_minute, decision.retry_after)
