"""Rules of the memory service: generate each archived session's memories once, serve recall."""

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from enum import Enum
from typing import Protocol
from uuid import UUID

import structlog

from contracts.base import Ping, Pong, utcnow
from contracts.history import MessageRecord
from contracts.memory import (
    MAX_MEMORY_CHARS,
    DeleteMemory,
    MemoriesStored,
    MemoryDeleted,
    MemoryPage,
    MemoryRecord,
    RecallMemories,
)
from contracts.sessions import SessionArchived, SessionDeleted
from services.memory.errors import AlreadyProcessed, InvalidInput, NotFound, Unavailable
from services.memory.models import STORED
from services.memory.store import Store
from services.runtime.cursor import MalformedCursor, Position, decode_cursor, encode_cursor
from services.runtime.heartbeat import beating
from services.runtime.meta import RequestMeta

log = structlog.get_logger("chatbus.memory")
RECALL_CURSOR = "r"
Heartbeat = Callable[[], Awaitable[None]]


class History(Protocol):
    """Where a session's messages come from."""

    async def session_messages(
        self, user_id: str, session_id: UUID, meta: RequestMeta
    ) -> list[MessageRecord] | None:
        """Return every message, oldest first; None if the session does not exist."""


class Extractor(Protocol):
    """The model that turns a conversation into memories."""

    async def extract(self, messages: Sequence[MessageRecord]) -> list[str]:
        """Return the memories found in the conversation."""


class Events(Protocol):
    """Where the service announces stored memories."""

    async def memories_stored(self, event: MemoriesStored, meta: RequestMeta) -> None:
        """Publish the event durably."""


class Outcome(Enum):
    """What handling one archived event did."""

    STORED = "stored"  # memories (possibly none) stored and announced
    ANNOUNCED = "announced"  # stored earlier; only the event was published again
    SKIPPED = "skipped"  # already done, or the session was deleted
    GONE = "gone"  # history no longer knows the session


class MemoryService:
    """Generate memories of archived sessions and answer recall and deletion."""

    def __init__(
        self,
        store: Store,
        history: History,
        extractor: Extractor,
        events: Events,
        *,
        instance: str,
        max_per_session: int = 10,
        heartbeat_interval: float = 20.0,
    ) -> None:
        self.store = store
        self.history = history
        self.extractor = extractor
        self.events = events
        self.instance = instance
        self.max_per_session = max_per_session
        self.heartbeat_interval = heartbeat_interval

    async def ping(self, _: Ping, __: RequestMeta) -> Pong:
        """Answer that this replica is alive and reaches its database."""
        # A readiness probe, asked every few seconds: refused with no stack trace per probe.
        if (why := await self.store.sql.unreachable()) is not None:
            raise Unavailable(why)
        return Pong(service="memory", instance=self.instance)

    async def recall(self, req: RecallMemories, _: RequestMeta) -> MemoryPage:
        """Return a page of the user's memories, newest first.

        ``query`` keeps memories whose content contains it, ignoring case (a plain
        substring match: ILIKE on Postgres; on SQLite only ASCII letters fold case).
        """
        try:
            after = decode_cursor(RECALL_CURSOR, req.cursor) if req.cursor else None
        except MalformedCursor as exc:
            raise InvalidInput(str(exc)) from exc
        async with self.store.read() as tx:
            items = await tx.recall(
                req.user_id,
                persona=req.persona,
                query=req.query,
                after=after,
                limit=req.limit + 1,
            )
        page, more = items[: req.limit], len(items) > req.limit
        last = page[-1] if more else None
        cursor = encode_cursor(RECALL_CURSOR, Position(last.created_at, last.id)) if last else None
        return MemoryPage(items=tuple(page), next_cursor=cursor)

    async def delete_memory(self, req: DeleteMemory, _: RequestMeta) -> MemoryDeleted:
        """Delete one of the user's memories; another user's is not found, like a missing one."""
        async with self.store.write() as tx:
            if not await tx.delete_memory(req.user_id, req.memory_id):
                raise NotFound("no such memory")
        return MemoryDeleted(deleted=True)

    async def forget_session(self, event: SessionDeleted, _: RequestMeta) -> int:
        """Delete a deleted session's memories; a repeat deletes nothing more."""
        async with self.store.write() as tx:
            count = await tx.forget_session(event.session_id, utcnow())
        log.info(
            "memories of a deleted session removed",
            session_id=str(event.session_id),
            memories=count,
        )
        return count

    async def generate(
        self, event: SessionArchived, meta: RequestMeta, heartbeat: Heartbeat
    ) -> Outcome:
        """Store and announce the memories of an archived session, once.

        Raises a ``GenerationFailed`` when this attempt failed and may be retried.
        """
        sid = event.session_id
        async with self.store.read() as tx:
            done = await tx.processed(sid)
            ids = await tx.session_memory_ids(sid) if done and done.status == STORED else []
        if done is not None and done.status != STORED:
            log.info("session already handled", session_id=str(sid), status=done.status)
            return Outcome.SKIPPED
        if done is not None:
            # Stored, but the event was not confirmed: announce what was stored then.
            await self._announce(event, ids, meta)
            return Outcome.ANNOUNCED
        messages = await self.history.session_messages(event.user_id, sid, meta)
        if messages is None:
            log.info("archived session no longer exists; nothing to remember", session_id=str(sid))
            return Outcome.GONE
        found: list[str] = []
        if messages:
            async with beating(heartbeat, self.heartbeat_interval):
                found = await self.extractor.extract(messages)
        records = self._records(event, self._clean(found))
        try:
            async with self.store.write() as tx:
                await tx.record_processed(sid, len(records), utcnow())
                await tx.insert_memories(records)
        except AlreadyProcessed:
            log.info("session stored concurrently by another delivery", session_id=str(sid))
            return Outcome.SKIPPED
        log.info(
            "memories stored", session_id=str(sid), memories=len(records), messages=len(messages)
        )
        await self._announce(event, [r.id for r in records], meta)
        return Outcome.STORED

    async def _announce(
        self, event: SessionArchived, ids: Sequence[UUID], meta: RequestMeta
    ) -> None:
        stored = MemoriesStored(
            session_id=event.session_id,
            user_id=event.user_id,
            persona=event.persona,
            memory_ids=tuple(ids),
            stored_at=utcnow(),
        )
        await self.events.memories_stored(stored, meta)
        async with self.store.write() as tx:
            await tx.mark_announced(event.session_id)

    def _clean(self, found: Sequence[str]) -> list[str]:
        """Keep distinct, non-empty memories that fit a record, at most the configured number."""
        kept: list[str] = []
        seen: set[str] = set()
        for text in found:
            text = " ".join(text.split())
            if not text or text.casefold() in seen:
                continue
            if len(text) > MAX_MEMORY_CHARS:
                # Cutting a fact short could change its meaning; leave it out.
                log.warning("memory too long; left out", chars=len(text))
                continue
            seen.add(text.casefold())
            kept.append(text)
        return kept[: self.max_per_session]

    @staticmethod
    def _records(event: SessionArchived, contents: Sequence[str]) -> list[MemoryRecord]:
        now = utcnow()
        # One microsecond apart, so newest-first lists a session's memories in a fixed order.
        return [
            MemoryRecord(
                id=uuid.uuid4(),
                user_id=event.user_id,
                session_id=event.session_id,
                persona=event.persona,
                content=content,
                created_at=now + timedelta(microseconds=index),
            )
            for index, content in enumerate(contents)
        ]

