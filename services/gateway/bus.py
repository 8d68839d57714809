"""The gateway's one I/O edge: request-reply, JetStream publish, and the job-state bucket.

Routes and the service see only :class:`GatewayBus`, so component tests inject
an in-memory stand-in. :class:`NatsBus` is the real thing; it raises the
runtime's :class:`~services.runtime.bus.BusError` family for every failure.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TypeVar
from uuid import UUID

import nats.errors
import nats.js.errors
import structlog
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from contracts.base import Contract, Reply
from contracts.chat import JobLane, JobState
from services.gateway.feed import JobFeed, follow_over_nats
from services.gateway.ratelimit import RateDecision, RateError, SlidingWindow
from services.runtime.bus import (
    BusClient,
    BusError,
    BusProtocolError,
    BusTimeout,
    BusUnavailable,
    RequestMeta,
)
from services.runtime.lanes import LaneError, LaneFull, Lanes

R = TypeVar("R", bound=Reply)
T = TypeVar("T")
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed compare-and-set
log = structlog.get_logger("chatbus.gateway.bus")


class GatewayBus(Protocol):
    """What the gateway needs from NATS."""

    @property
    def connected(self) -> bool:
        """Tell whether the connection to NATS is up."""
        ...

    async def request(
        self,
        subject: str,
        body: Contract,
        reply_type: type[R],
        meta: RequestMeta,
        timeout: float | None = None,
    ) -> R:
        """Send a request and return the validated reply."""
        ...

    async def publish(
        self,
        subject: str,
        body: Contract,
        meta: RequestMeta,
        *,
        stream: str | None = None,
        msg_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish a message; with ``stream``, wait until JetStream stored it."""
        ...

    async def get_job(self, job_id: UUID) -> tuple[JobState, int] | None:
        """Return a job's state and revision, or None when there is no such job."""
        ...

    async def create_job(self, state: JobState) -> int | None:
        """Store a new job and return its revision, or None when the id is taken."""
        ...

    async def update_job(self, state: JobState, revision: int) -> int | None:
        """Replace a job's state if it is still at ``revision``; return the new revision."""
        ...

    async def delete_job(self, job_id: UUID, revision: int) -> bool:
        """Delete a job if it is still at ``revision``; tell whether it was."""
        ...

    async def watch_job(self, job_id: UUID, timeout: float) -> JobState | None:
        """Wait until the job ends or ``timeout`` passes; return its latest state seen."""
        ...

    def follow_job(self, job_id: UUID) -> AbstractAsyncContextManager[JobFeed]:
        """Feed the job's deltas and every state written from now on, current one first."""
        ...

    async def append_to_lane(self, key: str, job_id: UUID, limit: int | None = None) -> JobLane:
        """Append a job to a lane; raise :class:`LaneFull` past ``limit``."""
        ...

    async def change_lane(self, key: str, edit: Callable[[JobLane], JobLane]) -> JobLane:
        """Apply ``edit`` to a lane atomically; exceptions it raises pass through."""
        ...

    async def remove_from_lane(self, key: str, job_id: UUID) -> JobLane:
        """Drop a job from a lane."""
        ...

    async def prune_lane(
        self, key: str, is_finished: Callable[[UUID], Awaitable[bool]]
    ) -> JobLane:
        """Drop the lane's entries whose job has ended or is gone."""
        ...

    async def take_rate(self, key: str, limit: int, window: float) -> RateDecision:
        """Take a slot of the sliding window under ``key``, or tell when one frees."""
        ...


class NatsBus:
    """:class:`GatewayBus` over a connected broker and the job-state bucket."""

    def __init__(
        self,
        broker: NatsBroker,
        kv: KeyValue,
        lanes_kv: KeyValue,
        timeout: float,
        *,
        rate_kv: KeyValue | None = None,
    ) -> None:
        self.client = BusClient(broker, timeout)
        self.connection: Client = broker.connection
        self.kv = kv
        self.lanes = Lanes(lanes_kv)
        self.rates = SlidingWindow(rate_kv) if rate_kv is not None else None
        self.timeout = timeout

    @property
    def connected(self) -> bool:
        """Tell whether the connection to NATS is up."""
        return bool(self.connection.is_connected)

    async def request(
        self,
        subject: str,
        body: Contract,
        reply_type: type[R],
        meta: RequestMeta,
        timeout: float | None = None,
    ) -> R:
        """Send a request and return the validated reply."""
        self._require_connection()
        return await self.client.request(subject, body, reply_type, meta, timeout)

    async def publish(
        self,
        subject: str,
        body: Contract,
        meta: RequestMeta,
        *,
        stream: str | None = None,
        msg_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish a message; with ``stream``, wait until JetStream stored it."""
        self._require_connection()
        await self.client.publish(
            subject, body, meta, stream=stream, msg_id=msg_id, timeout=timeout
        )

    async def get_job(self, job_id: UUID) -> tuple[JobState, int] | None:
        """Return a job's state and revision, or None when there is no such job."""
        try:
            entry = await self._kv(self.kv.get(str(job_id)))
        except KeyNotFoundError:  # also raised for a deleted key
            return None
        if entry.value is None or entry.revision is None:
            return None
        return _decode(entry.value), entry.revision

    async def create_job(self, state: JobState) -> int | None:
        """Store a new job and return its revision, or None when the id is taken."""
        try:
            return await self._kv(self.kv.create(str(state.id), _encode(state)))
        except KeyWrongLastSequenceError:
            return None

    async def update_job(self, state: JobState, revision: int) -> int | None:
        """Replace a job's state if it is still at ``revision``; return the new revision."""
        try:
            return await self._kv(self.kv.update(str(state.id), _encode(state), last=revision))
        except KeyWrongLastSequenceError:
            return None

    async def delete_job(self, job_id: UUID, revision: int) -> bool:
        """Delete a job if it is still at ``revision``; tell whether it was."""
        try:
            await self._kv(self.kv.delete(str(job_id), last=revision))
        except KeyWrongLastSequenceError:
            return False
        return True

    def follow_job(self, job_id: UUID) -> AbstractAsyncContextManager[JobFeed]:
        """Feed the job's deltas and every state written from now on, current one first."""
        self._require_connection()
        return follow_over_nats(self.connection, self.kv, job_id, self.timeout)

    async def append_to_lane(self, key: str, job_id: UUID, limit: int | None = None) -> JobLane:
        """Append a job to a lane; raise :class:`LaneFull` past ``limit``."""
        return await self._lane(self.lanes.append(key, job_id, limit))

    async def change_lane(self, key: str, edit: Callable[[JobLane], JobLane]) -> JobLane:
        """Apply ``edit`` to a lane atomically; exceptions it raises pass through."""
        return await self._lane(self.lanes.change(key, edit))

    async def remove_from_lane(self, key: str, job_id: UUID) -> JobLane:
        """Drop a job from a lane."""
        return await self._lane(self.lanes.remove(key, job_id))

    async def prune_lane(
        self, key: str, is_finished: Callable[[UUID], Awaitable[bool]]
    ) -> JobLane:
        """Drop the lane's entries whose job has ended or is gone."""
        return await self._lane(self.lanes.prune(key, is_finished))

    async def take_rate(self, key: str, limit: int, window: float) -> RateDecision:
        """Take a slot of the sliding window under ``key``; any failure of the store is a 503."""
        if self.rates is None:
            raise BusUnavailable("no rate bucket")
        try:
            return await self._kv(self.rates.take(key, limit, window))
        except (RateError, BusError) as exc:
            raise BusUnavailable(f"rate limits unavailable: {exc}") from exc

    async def watch_job(self, job_id: UUID, timeout: float) -> JobState | None:
        """Wait until the job ends or ``timeout`` passes; return its latest state seen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        latest: JobState | None = None
        async with self._watcher(job_id) as watcher:
            while (remaining := deadline - loop.time()) > 0:
                try:
                    entry = await watcher.updates(timeout=remaining)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    break
                # None marks the end of the initial values; deletes carry no state.
                if entry is None or entry.value is None or entry.operation in (KV_DEL, KV_PURGE):
                    continue
                latest = _decode(entry.value)
                if latest.finished:
                    break
        return latest

    @asynccontextmanager
    async def _watcher(self, job_id: UUID) -> AsyncIterator[KeyValue.KeyWatcher]:
        watcher = await self._kv(self.kv.watch(str(job_id)))
        try:
            yield watcher
        finally:
            try:
                await watcher.stop()  # type: ignore[no-untyped-call]
            except nats.errors.Error as exc:
                log.warning("job watcher did not stop cleanly", job_id=str(job_id), error=repr(exc))

    def _require_connection(self) -> None:
        # While nats-py reconnects it buffers calls until they time out: refuse at once instead.
        if not self.connected:
            raise BusUnavailable("not connected to NATS")

    async def _kv(self, call: Awaitable[T]) -> T:
        """Await a bucket call within the bus timeout, translating NATS errors."""
        try:
            self._require_connection()
            async with asyncio.timeout(self.timeout):
                return await call
        except (KeyNotFoundError, KeyWrongLastSequenceError):
            raise
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise KeyWrongLastSequenceError(description=exc.description) from exc
            raise BusUnavailable(f"job bucket unavailable: {exc!r}") from exc
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            if not self.connected:
                raise BusUnavailable("lost the connection to NATS") from exc
            raise BusTimeout(f"job bucket gave no answer within {self.timeout:.2f}s") from exc
        except nats.errors.Error as exc:
            raise BusUnavailable(f"job bucket unavailable: {exc!r}") from exc
        finally:
            if asyncio.iscoroutine(call):
                call.close()  # never awaited when refused early: no "never awaited" warning

    async def _lane(self, call: Awaitable[T]) -> T:
        """Await a lanes call within the bus timeout; any failure of the store is a 503."""
        try:
            return await self._kv(call)
        except LaneFull:
            raise
        except (LaneError, BusError) as exc:
            raise BusUnavailable(f"lanes unavailable: {exc}") from exc


def _encode(state: JobState) -> bytes:
    return state.model_dump_json().encode()


def _decode(value: bytes) -> JobState:
    try:
        return JobState.model_validate_json(value)
    except ValidationError as exc:
        raise BusProtocolError(f"bad job state in the bucket: {exc}") from exc
