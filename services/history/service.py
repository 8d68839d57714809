"""Rules of the history service: who may see and change which session, and when."""

import uuid
from collections.abc import Sequence
from typing import Protocol

import structlog

from contracts import subjects
from contracts.base import Contract, Ping, Pong, utcnow
from contracts.history import (
    AppendMessage,
    CreateSession,
    GetSession,
    ListMessages,
    ListSessions,
    MessagePage,
    MessageRecord,
    MessageReply,
    SessionPage,
    SessionRecord,
    SessionReply,
)
from contracts.sessions import SessionArchived
from services.history.cursor import Position, decode_cursor, encode_cursor
from services.history.errors import (
    ActiveSessionExists,
    Conflict,
    DuplicateMessage,
    NotFound,
    RetryableConflict,
)
from services.history.store import Store, Tx
from services.runtime.bus import BusError, RequestMeta

log = structlog.get_logger("chatbus.history")

SESSION_CURSOR = "s"
MESSAGE_CURSOR = "m"
CREATE_ATTEMPTS = 3


class Publisher(Protocol):
    """Where events go (``BusClient`` in the service, a list in tests)."""

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
        """Publish ``body``; with ``stream``, wait until JetStream stored it."""


class HistoryService:
    """Serve the history requests against a store, announcing archived sessions."""

    def __init__(
        self, store: Store, publisher: Publisher, *, instance: str, publish_timeout: float = 2.0
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.instance = instance
        self.publish_timeout = publish_timeout

    async def ping(self, _: Ping, __: RequestMeta) -> Pong:
        """Answer that this replica is alive."""
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
                    await tx.insert_session(new)
            except ActiveSessionExists:
                log.info("concurrent session create; retrying", persona=req.persona)
                continue
            # Not atomic with the commit: a crash here loses the event (an outbox comes later).
            for old in archived:
                await self._announce_archived(old, meta)
            return SessionReply(session=new)
        raise RetryableConflict("sessions with this persona are being created concurrently")

    async def get_session(self, req: GetSession, _: RequestMeta) -> SessionReply:
        """Return one of the user's sessions."""
        async with self.store.read() as tx:
            session = await _owned(tx, req.session_id, req.user_id)
        return SessionReply(session=session)

    async def list_sessions(self, req: ListSessions, _: RequestMeta) -> SessionPage:
        """Return a page of the user's sessions, newest first."""
        after = decode_cursor(SESSION_CURSOR, req.cursor) if req.cursor else None
        async with self.store.read() as tx:
            items = await tx.list_sessions(
                req.user_id,
                status=req.status,
                persona=req.persona,
                after=after,
                limit=req.limit + 1,
            )
        page, more = items[: req.limit], len(items) > req.limit
        return SessionPage(items=tuple(page), next_cursor=_next(SESSION_CURSOR, page, more))

    async def append_message(self, req: AppendMessage, _: RequestMeta) -> MessageReply:
        """Store a job's message once; a repeat returns the stored one unchanged."""
        now = utcnow()
        record = MessageRecord(
            id=uuid.uuid4(),
            session_id=req.session_id,
            user_id=req.user_id,
            role=req.role,
            content=req.content,
            created_at=now,
            job_id=req.job_id,
        )
        try:
            async with self.store.write() as tx:
                # The row lock orders appends against a concurrent archive of the session.
                session = await _owned(tx, req.session_id, req.user_id, lock=True)
                existing = await tx.get_message(req.job_id, req.role)
                if existing is not None:
                    return self._duplicate(existing, req)
                if req.role == "user" and session.status != "active":
                    raise Conflict("the session is archived")
                await tx.insert_message(record)
                await tx.count_message(req.session_id, now)
        except DuplicateMessage:
            # A concurrent duplicate committed first: answer with its message.
            async with self.store.read() as tx:
                existing = await tx.get_message(req.job_id, req.role)
            if existing is None:
                raise NotFound("no such session") from None
            return self._duplicate(existing, req)
        return MessageReply(message=record, created=True)

    async def list_messages(self, req: ListMessages, _: RequestMeta) -> MessagePage:
        """Return a page of a session's messages, newest first."""
        after = decode_cursor(MESSAGE_CURSOR, req.cursor) if req.cursor else None
        async with self.store.read() as tx:
            await _owned(tx, req.session_id, req.user_id)
            items = await tx.list_messages(req.session_id, after=after, limit=req.limit + 1)
        page, more = items[: req.limit], len(items) > req.limit
        return MessagePage(items=tuple(page), next_cursor=_next(MESSAGE_CURSOR, page, more))

    def _duplicate(self, existing: MessageRecord, req: AppendMessage) -> MessageReply:
        if existing.session_id != req.session_id or existing.user_id != req.user_id:
            # A job id belongs to one session; reusing it elsewhere is a caller's bug.
            raise Conflict("this job already stored a message in another session")
        return MessageReply(message=existing, created=False)

    async def _announce_archived(self, session: SessionRecord, meta: RequestMeta) -> None:
        assert session.archived_at is not None
        event = SessionArchived(
            session_id=session.id,
            user_id=session.user_id,
            persona=session.persona,
            archived_at=session.archived_at,
        )
        try:
            await self.publisher.publish(
                subjects.SESSION_ARCHIVED,
                event,
                meta,
                stream=subjects.SESSION_EVENTS_STREAM.name,
                msg_id=f"{session.id}.archived",
                timeout=self.publish_timeout,
            )
        except BusError:
            # The session is archived either way; failing the request would invite a retry
            # that archives the new session too.
            log.exception("could not announce archived session", session_id=str(session.id))


async def _owned(
    tx: Tx, session_id: uuid.UUID, user_id: str, *, lock: bool = False
) -> SessionRecord:
    """Return the user's session, or raise :class:`NotFound` (missing and foreign alike)."""
    session = await tx.get_session(session_id, lock=lock)
    if session is None or session.user_id != user_id:
        raise NotFound("no such session")
    return session


def _next(kind: str, page: Sequence[SessionRecord | MessageRecord], more: bool) -> str | None:
    if not more or not page:
        return None
    last = page[-1]
    return encode_cursor(kind, Position(created_at=last.created_at, id=last.id))
