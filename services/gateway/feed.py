"""A live feed of one job: its token deltas (core NATS) merged with its state (KV watch).

The delta subscription is opened before the watch, and the watch delivers the
current state first and every later write after it, so nothing falls in a gap
between reading the state and following it.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from contracts.chat import ChatDelta, JobState
from contracts.subjects import chat_delta
from services.runtime.bus import BusUnavailable

FeedItem = ChatDelta | tuple[JobState, int]
log = structlog.get_logger("chatbus.gateway.feed")


class JobFeed:
    """Deltas and ``(state, revision)`` pairs of one job, in arrival order."""

    def __init__(self) -> None:
        self._items: asyncio.Queue[FeedItem] = asyncio.Queue()

    def put(self, item: FeedItem) -> None:
        """Add an item at the end."""
        self._items.put_nowait(item)

    async def next(self, timeout: float) -> FeedItem | None:
        """Return the next item, or None when ``timeout`` passes first."""
        try:
            async with asyncio.timeout(timeout):
                return await self._items.get()
        except TimeoutError:
            return None


@asynccontextmanager
async def follow_over_nats(
    connection: Client, kv: KeyValue, job_id: UUID, timeout: float
) -> AsyncIterator[JobFeed]:
    """Subscribe to a job's deltas, then watch its state; stop both on exit."""
    feed = JobFeed()

    async def on_delta(msg: Msg) -> None:
        try:
            feed.put(ChatDelta.model_validate_json(msg.data))
        except ValidationError:
            log.warning("dropped a malformed delta", job_id=str(job_id))

    try:
        async with asyncio.timeout(timeout):
            sub = await connection.subscribe(chat_delta(str(job_id)), cb=on_delta)
    except (nats.errors.Error, TimeoutError) as exc:
        raise BusUnavailable(f"could not subscribe to the job's deltas: {exc!r}") from exc
    watcher: KeyValue.KeyWatcher | None = None
    pump: asyncio.Task[None] | None = None
    try:
        try:
            async with asyncio.timeout(timeout):
                watcher = await kv.watch(str(job_id))
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusUnavailable(f"could not watch the job: {exc!r}") from exc
        pump = asyncio.create_task(_pump(watcher, feed, job_id))
        yield feed
    finally:
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            if watcher is not None:
                await watcher.stop()  # type: ignore[no-untyped-call]
            await sub.unsubscribe()


async def _pump(watcher: KeyValue.KeyWatcher, feed: JobFeed, job_id: UUID) -> None:
    async for entry in watcher:
        # None marks the end of the initial values; deletes carry no state.
        if entry is None or entry.value is None or entry.operation in (KV_DEL, KV_PURGE):
            continue
        try:
            state = JobState.model_validate_json(entry.value)
        except ValidationError:
            log.warning("skipped a malformed job state", job_id=str(job_id))
            continue
        if entry.revision is not None:
            feed.put((state, entry.revision))
