"""Rules of the history service: who may see and change which session, and when."""

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import structlog

from contracts.base import Contract, Ping, Pong, utcnow
from contracts.history import (
    AppendMessage,
    ArchiveSession,
    CreateSession,
    DeleteReply,
    DeleteSession,
    EndJob,
    GetSession,
    JobEnded,
    ListFeed,
    ListMessages,
    ListSessions,
    MessagePage,
    MessageRecord,
    MessageReply,
    SearchMessages,
    SessionPage,
    SessionRecord,
    SessionReply,
)
from services.history.admission import JOB_HORIZON
from services.history.appends import AppendBatcher
from services.history.cache import Cache
from services.history.errors import (
    ActiveSessionExists,
    InvalidInput,
    NotFound,
    RetryableConflict,
    Unavailable,
)
from services.history.outbox import archived_event, deleted_event
from services.history.store import Event, Store, Tx
from services.runtime.cursor import MalformedCursor, Position, decode_cursor, encode_cursor
from services.runtime.meta import RequestMeta

log = structlog.get_logger("chatbus.history")

SESSION_CURSOR = "s"
MESSAGE_CURSOR = "m"
FEED_CURSOR = "f"
CREATE_ATTEMPTS = 3


class Outbox(Protocol):
    """Told after a commit that queued outbox events (the relay)."""

    def wake(self) -> None:
        """Publish the pending events soon (by claiming them)."""

    def announce(self, events: Sequence[Event]) -> None:
        """Publish these just-committed events now, from memory."""

    def take_sent(self) -> list[str]:
        """Hand over the published rows not yet marked sent."""

    def keep_sent(self, msg_ids: Sequence[str]) -> None:
        """Take back rows that were not marked."""


class HistoryService:
    """Serve the history requests: reads through the cache, writes with outbox events."""

    def __init__(
        self, store: Store, cache: Cache, outbox: Outbox, *, instance: str, lease: float = 10.0
    ) -> None:
        self.store = store
        self.cache = cache
        self.outbox = outbox
        self.instance = instance
        self.appends = AppendBatcher(store, self._appended, marks=outbox, lease=lease)

    async def ping(self, _: Ping, __: RequestMeta) -> Pong:
        """Answer that this replica is alive and reaches its database."""
        # A readiness probe, asked every few seconds: refused with no stack trace per probe.
        if (why := await self.store.sql.unreachable()) is not None:
            raise Unavailable(why)
        return Pong(service="history", instance=self.instance)

    async def create_session(self, req: CreateSession, meta: RequestMeta) -> SessionReply:
        """Create a session, archiving the user's active one with the same persona."""
        for _ in range(CREATE_ATTEMPTS):
            now = utcnow()
            new = SessionRecord(
                id=uuid.uuid4(),
                user_id=req.user_id,
                persona=req.persona,
                title=req.title,
                status="active",
                created_at=now,
                updated_at=now,
                archived_at=None,
                message_count=0,
            )
            try:
                async with self.store.write() as tx:
                    # Creates for one user and persona queue up instead of racing.
                    await tx.lock_persona(req.user_id, req.persona)
                    archived = await tx.archive_active(req.user_id, req.persona, now)
                    for old in archived:
                        await _queue(tx, archived_event(old), meta, now)
                    await tx.insert_session(new)
            except ActiveSessionExists:
                log.info("concurrent session create; retrying", persona=req.persona)
                continue
            await self._committed(req.user_id, [old.id for old in archived], events=bool(archived))
            return SessionReply(session=new)
        raise RetryableConflict("sessions with this persona are being created concurrently")

    async def archive_session(self, req: ArchiveSession, meta: RequestMeta) -> SessionReply:
        """Archive one of the user's sessions; an archived one is returned unchanged."""
        now = utcnow()
        async with self.store.write() as tx:
            session = await _owned(tx, req.session_id, req.user_id, lock=True)
            if session.status == "archived":
                return SessionReply(session=session)
            session = await tx.archive_session(req.session_id, now)
            await _queue(tx, archived_event(session), meta, now)
        await self._committed(req.user_id, [session.id], events=True)
        return SessionReply(session=session)

    async def delete_session(self, req: DeleteSession, meta: RequestMeta) -> DeleteReply:
        """Delete one of the user's sessions with its messages; name its unfinished jobs."""
        now = utcnow()
        async with self.store.write() as tx:
            session = await _owned(tx, req.session_id, req.user_id, lock=True)
            unfinished = await tx.session_unfinished(session.id, now - JOB_HORIZON)
            await tx.delete_session(session.id)
            await _queue(tx, deleted_event(session, now), meta, now)
        await self._committed(req.user_id, [session.id], events=True)
        return DeleteReply(deleted=True, unfinished=tuple(unfinished))

    async def get_session(self, req: GetSession, _: RequestMeta) -> SessionReply:
        """Return one of the user's sessions."""

        async def load() -> SessionReply:
            async with self.store.read() as tx:
                return SessionReply(session=await _owned(tx, req.session_id, req.user_id))

        return await self.cache.fetch(
            "session", user_id=req.user_id, session_id=req.session_id, params={},
            model=SessionReply, load=load,
        )

    async def list_sessions(self, req: ListSessions, _: RequestMeta) -> SessionPage:
        """Return a page of the user's sessions, newest first."""
        after = _after(SESSION_CURSOR, req.cursor)

        async def load() -> SessionPage:
            async with self.store.read() as tx:
                items = await tx.list_sessions(
                    req.user_id, status=req.status, persona=req.persona, after=after,
                    limit=req.limit + 1,
                )
            page, more = items[: req.limit], len(items) > req.limit
            return SessionPage(items=tuple(page), next_cursor=_next(SESSION_CURSOR, page, more))

        params = req.model_dump(mode="json", include={"status", "persona", "limit", "cursor"})
        return await self.cache.fetch(
            "sessions", user_id=req.user_id, session_id=None, params=params,
            model=SessionPage, load=load,
        )

    async def append_message(self, req: AppendMessage, meta: RequestMeta) -> MessageReply:
        """Store a job's message once, admitting the job of a user message (limits, order,
        multitask) in the same transaction; a repeat returns the stored one unchanged."""
        if req.role == "user" and req.admission is None:
            raise InvalidInput("a user message needs an admission")
        if req.role != "user" and req.admission is not None:
            raise InvalidInput("only a user message is admitted")
        return await self.appends.append(req, meta)  # with whatever other appends are waiting

    async def end_job(self, req: EndJob, _: RequestMeta) -> JobEnded:
        """Mark a job that ended without a reply (failed, cancelled) ended; a repeat is a no-op."""
        return JobEnded(known=await self.store.end_job(req.user_id, req.job_id, utcnow()))

    async def _appended(
        self, users: set[str], sessions: set[uuid.UUID], events: list[Event]
    ) -> None:
        """After an append batch committed: publish its jobs, retire what it changed."""
        self.outbox.announce(events)
        await self.cache.invalidate_many(users, sessions)

    async def list_messages(self, req: ListMessages, _: RequestMeta) -> MessagePage:
        """Return a page of a session's messages, newest first."""
        after = _after(MESSAGE_CURSOR, req.cursor)

        async def load() -> MessagePage:
            async with self.store.read() as tx:
                await _owned(tx, req.session_id, req.user_id)
                items = await tx.list_messages(req.session_id, after=after, limit=req.limit + 1)
            page, more = items[: req.limit], len(items) > req.limit
            return MessagePage(items=tuple(page), next_cursor=_next(MESSAGE_CURSOR, page, more))

        return await self.cache.fetch(
            "messages", user_id=req.user_id, session_id=req.session_id,
            params={"limit": req.limit, "cursor": req.cursor}, model=MessagePage, load=load,
        )

    async def list_feed(self, req: ListFeed, _: RequestMeta) -> MessagePage:
        """Return a page of the user's messages across all sessions, newest first."""
        after = _after(FEED_CURSOR, req.cursor)

        async def load() -> MessagePage:
            async with self.store.read() as tx:
                items = await tx.list_feed(req.user_id, after=after, limit=req.limit + 1)
            page, more = items[: req.limit], len(items) > req.limit
            return MessagePage(items=tuple(page), next_cursor=_next(FEED_CURSOR, page, more))

        return await self.cache.fetch(
            "feed", user_id=req.user_id, session_id=None,
            params={"limit": req.limit, "cursor": req.cursor}, model=MessagePage, load=load,
        )

    async def search_messages(self, req: SearchMessages, _: RequestMeta) -> MessagePage:
        """Return the user's messages across sessions that contain the query, newest first."""
        async with self.store.read() as tx:
            items = await tx.search_messages(req.user_id, req.query, req.limit)
        return MessagePage(items=tuple(items))

    async def _committed(
        self, user_id: str, session_ids: Sequence[uuid.UUID], *, events: bool
    ) -> None:
        """Retire the cache entries a commit changed, before replying; wake the relay."""
        await self.cache.invalidate(user_id, session_ids)
        if events:
            self.outbox.wake()


async def _queue(
    tx: Tx, event: tuple[str, str, Contract], meta: RequestMeta, at: datetime
) -> None:
    msg_id, subject, body = event
    row = Event(msg_id, subject, body.model_dump_json(), meta.request_id, meta.user_id, at)
    await tx.add_events([row])


async def _owned(
    tx: Tx, session_id: uuid.UUID, user_id: str, *, lock: bool = False
) -> SessionRecord:
    """Return the user's session, or raise :class:`NotFound` (missing and foreign alike)."""
    session = await tx.get_session(session_id, lock=lock)
    if session is None or session.user_id != user_id:
        raise NotFound("no such session")
    return session


def _after(kind: str, cursor: str | None) -> Position | None:
    """Decode a page's cursor; a malformed one is the caller's ``invalid``."""
    if cursor is None:
        return None
    try:
        return decode_cursor(kind, cursor)
    except MalformedCursor as exc:
        raise InvalidInput(str(exc)) from exc


def _next(kind: str, page: Sequence[SessionRecord | MessageRecord], more: bool) -> str | None:
    if not more or not page:
        return None
    last = page[-1]
    return encode_cursor(kind, Position(created_at=last.created_at, id=last.id))
