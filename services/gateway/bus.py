"""The gateway's one I/O edge: request-reply, the job bucket, cancel requests, job events.

Routes and the service see only :class:`GatewayBus`, so component tests inject
an in-memory stand-in. :class:`NatsBus` is the real thing; it raises the
runtime's :class:`~services.runtime.meta.BusError` family for every failure.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar
from uuid import UUID

import nats.errors
import structlog
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.base import Contract, Reply
from contracts.chat import CancelRequest, JobState
from services.runtime.bus import BusClient
from services.runtime.kv import Entries, KvConflict
from services.runtime.meta import BusUnavailable, RequestMeta

R = TypeVar("R", bound=Reply)
log = structlog.get_logger("chatbus.gateway.bus")


@dataclass(frozen=True)
class StoredEvent:
    """One event of a job as the JOB_EVENTS stream holds it."""

    seq: int  # its position in the stream: the SSE event id
    kind: str  # the last token of its subject: status, delta, tool_call, ..., completed
    data: bytes


class EventFeed(Protocol):
    """A job's stored events, in order, from a position on; live ones as they come."""

    async def next(self, timeout: float) -> StoredEvent | None:
        """Return the next event, or None when ``timeout`` passes first."""
        ...


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

    async def get_job(self, job_id: UUID) -> JobState | None:
        """Return a job's state, or None when there is no such job."""
        ...

    async def create_job(self, state: JobState) -> int | None:
        """Store a new job and return its revision, or None when the id is taken."""
        ...

    async def delete_job(self, job_id: UUID, revision: int) -> None:
        """Delete a job no one else has seen (still at ``revision``)."""
        ...

    async def wait_job(self, job_id: UUID, timeout: float) -> JobState | None:
        """Wait until the job ends or ``timeout`` passes; return its latest state seen."""
        ...

    async def request_cancel(self, request: CancelRequest) -> None:
        """Record that the user asked to stop a job (every agent watches these)."""
        ...

    def follow_job(self, job_id: UUID, after: int) -> AbstractAsyncContextManager[EventFeed]:
        """Feed the job's events stored after stream position ``after`` (0: all of them)."""
        ...


class NatsBus:
    """:class:`GatewayBus` over a connected broker, the job bucket and the cancel bucket."""

    def __init__(
        self,
        broker: NatsBroker,
        jobs_kv: KeyValue,
        cancels_kv: KeyValue,
        timeout: float,
        client: BusClient | None = None,
    ) -> None:
        self.client = client or BusClient(broker, timeout)
        self.connection: Client = broker.connection
        self.jobs = Entries(jobs_kv, JobState, timeout)
        self.cancels = Entries(cancels_kv, CancelRequest, timeout)
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

    async def get_job(self, job_id: UUID) -> JobState | None:
        """Return a job's state, or None when there is no such job."""
        self._require_connection()
        found = await self.jobs.get(str(job_id))
        return None if found is None else found.value

    async def create_job(self, state: JobState) -> int | None:
        """Store a new job and return its revision, or None when the id is taken."""
        self._require_connection()
        try:
            return (await self.jobs.create(str(state.id), state)).revision
        except KvConflict:
            return None

    async def delete_job(self, job_id: UUID, revision: int) -> None:
        """Delete a job no one else has seen (still at ``revision``)."""
        self._require_connection()
        await self.jobs.delete(str(job_id), revision)

    async def wait_job(self, job_id: UUID, timeout: float) -> JobState | None:
        """Wait until the job ends or ``timeout`` passes; return its latest state seen."""
        self._require_connection()
        latest = await self.jobs.wait(
            str(job_id), timeout, lambda state: state is not None and state.finished
        )
        return None if latest is None else latest.value

    async def request_cancel(self, request: CancelRequest) -> None:
        """Record that the user asked to stop a job (every agent watches these)."""
        self._require_connection()
        await self.cancels.put(str(request.job_id), request)

    def follow_job(self, job_id: UUID, after: int) -> AbstractAsyncContextManager[EventFeed]:
        """Feed the job's events stored after stream position ``after`` (0: all of them)."""
        self._require_connection()
        return _follow(self.connection, job_id, after, self.timeout)

    def _require_connection(self) -> None:
        # While nats-py reconnects it buffers calls until they time out: refuse at once instead.
        if not self.connected:
            raise BusUnavailable("not connected to NATS")


class _QueueFeed:
    """Events pushed by the subscription's callback, read one at a time."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[StoredEvent] = asyncio.Queue()

    async def put(self, msg: Msg) -> None:
        kind = msg.subject.rsplit(".", 1)[-1]
        self.items.put_nowait(StoredEvent(msg.metadata.sequence.stream, kind, msg.data))

    async def next(self, timeout: float) -> StoredEvent | None:
        try:
            async with asyncio.timeout(timeout):
                return await self.items.get()
        except TimeoutError:
            return None


@asynccontextmanager
async def _follow(
    connection: Client, job_id: UUID, after: int, timeout: float
) -> AsyncIterator[EventFeed]:
    """Read a job's events with an ordered consumer (no acks; the server keeps them)."""
    feed = _QueueFeed()
    if after > 0:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1
        )
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    try:
        async with asyncio.timeout(timeout):
            sub = await connection.jetstream().subscribe(
                subjects.job_events(job_id), cb=feed.put, ordered_consumer=True,
                stream=subjects.JOB_EVENTS_STREAM.name, config=config,
            )
    except (nats.errors.Error, TimeoutError) as exc:
        raise BusUnavailable(f"could not follow the job's events: {exc!r}") from exc
    try:
        yield feed
    finally:
        try:
            await sub.unsubscribe()
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("job event subscription did not end cleanly", error=repr(exc))
