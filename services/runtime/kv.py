"""Typed entries of a JetStream key-value bucket, each change a compare-and-set on its revision.

Errors (all :class:`~services.runtime.meta.BusError`, so callers map them once)::

    KvError            the bucket did not answer, or held an unreadable value
     └── KvConflict    the key exists already (create), or moved past the revision (update)
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from services.runtime.meta import BusError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed compare-and-set


class KvError(BusError):
    """The bucket did not answer, or a value could not be read."""


class KvConflict(KvError):
    """The key exists already, or changed since the revision given."""


@dataclass(frozen=True)
class Versioned(Generic[M]):
    """A value and the bucket revision it was read or written at."""

    value: M
    revision: int


class Entries(Generic[M]):
    """Read, create, compare-and-set and watch values of one model in a bucket."""

    def __init__(self, kv: KeyValue, model: type[M], timeout: float) -> None:
        self.kv = kv
        self.model = model
        self.timeout = timeout

    async def get(self, key: str) -> Versioned[M] | None:
        """Return the value under ``key``, or None when there is none (or it was deleted)."""
        try:
            entry = await self._call(self.kv.get(key))
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return Versioned(self._decode(entry.value), entry.revision)

    async def create(self, key: str, value: M) -> Versioned[M]:
        """Store a new value; raise :class:`KvConflict` when the key exists."""
        return Versioned(value, await self._call(self.kv.create(key, _encode(value))))

    async def update(self, key: str, value: M, revision: int) -> Versioned[M]:
        """Replace the value if the key is still at ``revision``."""
        return Versioned(
            value, await self._call(self.kv.update(key, _encode(value), last=revision))
        )

    async def put(self, key: str, value: M) -> int:
        """Store ``value`` whatever was there; return the revision."""
        return await self._call(self.kv.put(key, _encode(value)))

    async def delete(self, key: str, revision: int | None = None) -> None:
        """Delete the key (only if still at ``revision``, when given)."""
        await self._call(self.kv.delete(key, last=revision))

    async def wait(
        self, key: str, timeout: float, until: Callable[[M | None], bool]
    ) -> Versioned[M] | None:
        """Follow ``key`` until ``until(value)`` holds or ``timeout`` passes; return the latest.

        One round trip: an ordered consumer on the key's subject, from its current value
        on (nothing comes for a key never written). A deleted key reads as None.
        """
        changes: asyncio.Queue[Msg] = asyncio.Queue()
        bucket = self.kv._name

        async def collect(msg: Msg) -> None:
            changes.put_nowait(msg)

        sub = await self._call(self.kv._js.subscribe(
            f"$KV.{bucket}.{key}", cb=collect, ordered_consumer=True, stream=f"KV_{bucket}",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
        ))
        latest: Versioned[M] | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await changes.get()
                    deleted = (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE")
                    if deleted or not msg.data:
                        latest = None
                    else:
                        latest = Versioned(self._decode(msg.data), msg.metadata.sequence.stream)
                    if until(None if latest is None else latest.value):
                        return latest
        except TimeoutError:
            return latest
        finally:
            try:
                await sub.unsubscribe()
            except (nats.errors.Error, TimeoutError):
                pass  # the ordered consumer goes away by itself when inactive

    def _decode(self, value: bytes) -> M:
        try:
            return self.model.model_validate_json(value)
        except ValidationError as exc:
            raise KvError(f"unreadable {self.model.__name__} in the bucket: {exc}") from exc

    async def _call(self, call: Awaitable[T]) -> T:
        """Await a bucket call within the timeout, translating NATS errors once."""
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except KeyNotFoundError:
            raise
        except KeyWrongLastSequenceError as exc:
            raise KvConflict(str(exc)) from exc
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise KvConflict(exc.description or "wrong last sequence") from exc
            raise KvError(f"bucket unavailable: {exc!r}") from exc
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            raise KvError(f"bucket gave no answer within {self.timeout:.2f}s") from exc
        except nats.errors.Error as exc:
            raise KvError(f"bucket unavailable: {exc!r}") from exc


def _encode(value: BaseModel) -> bytes:
    return value.model_dump_json().encode()
