"""In-memory stand-ins for the gateway's tests: a history service over dicts, and a bus.

Holds no tests of its own; the gateway's unit and integration tests import it.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast
from uuid import UUID

import httpx
from fastapi import FastAPI
from nats.js.kv import KeyValue
from services.runtime.lanes import Lanes

from contracts import subjects
from contracts.base import BusError, Contract, Ping, Pong, Reply, utcnow
from contracts.chat import ChatDelta, JobLane, JobState
from contracts.history import (
    AppendMessage,
    ArchiveSession,
    CreateSession,
    DeleteReply,
    DeleteSession,
    GetSession,
    ListFeed,
    ListMessages,
    ListSessions,
    MessagePage,
    MessageRecord,
    MessageReply,
    SessionPage,
    SessionRecord,
    SessionReply,
)
from contracts.memory import (
    DeleteMemory,
    MemoryDeleted,
    MemoryPage,
    MemoryRecord,
    RecallMemories,
)
from services.gateway.app import create_app
from services.gateway.auth import mint_token
from services.gateway.config import Settings
from services.gateway.feed import JobFeed
from services.gateway.ratelimit import RateDecision, SlidingWindow
from services.runtime.bus import BusUnavailable, RequestMeta
from tests.kv import FakeKV

R = TypeVar("R", bound=Reply)


class FakeHistory:
    """The history service's request-reply behaviour over two dicts."""

    def __init__(self) -> None:
        self.sessions: dict[UUID, SessionRecord] = {}
        self.messages: dict[UUID, list[MessageRecord]] = {}
        self.last = utcnow()

    def tick(self) -> datetime:
        """Return the time now, strictly after the last one handed out (newest first is exact)."""
        self.last = max(utcnow(), self.last + timedelta(microseconds=1))
        return self.last

    def create_session(self, req: CreateSession) -> SessionReply:
        """Create a session, archiving the user's active one of the persona."""
        now = utcnow()
        for sid, old in list(self.sessions.items()):
            if old.user_id == req.user_id and old.persona == req.persona and old.status == "active":
                self.sessions[sid] = old.model_copy(
                    update={"status": "archived", "archived_at": now, "updated_at": now}
                )
        # Strictly increasing times keep "newest first" well defined.
        now = now + timedelta(microseconds=len(self.sessions))
        record = SessionRecord(
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
        self.sessions[record.id] = record
        self.messages[record.id] = []
        return SessionReply(session=record)

    def get_session(self, req: GetSession) -> SessionReply:
        """Return a session of the user."""
        found = self.sessions.get(req.session_id)
        if found is None or found.user_id != req.user_id:
            return SessionReply(error=BusError(code="not_found", message="no such session"))
        return SessionReply(session=found)

    def list_sessions(self, req: ListSessions) -> SessionPage:
        """Return a page of the user's sessions, newest first; the cursor is an offset."""
        rows = sorted(
            (
                s
                for s in self.sessions.values()
                if s.user_id == req.user_id
                and (req.status is None or s.status == req.status)
                and (req.persona is None or s.persona == req.persona)
            ),
            key=lambda s: s.created_at,
            reverse=True,
        )
        if (start := offset(req.cursor)) is None:
            return SessionPage(error=BusError(code="invalid", message="malformed cursor"))
        end = start + req.limit
        return SessionPage(
            items=tuple(rows[start:end]), next_cursor=str(end) if end < len(rows) else None
        )

    def append_message(self, req: AppendMessage) -> MessageReply:
        """Store a message once per (job, role)."""
        session = self.sessions.get(req.session_id)
        if session is None or session.user_id != req.user_id:
            return MessageReply(error=BusError(code="not_found", message="no such session"))
        for old in self.messages[req.session_id]:
            if old.job_id == req.job_id and old.role == req.role:
                return MessageReply(message=old, created=False, persona=session.persona)
        if req.role == "user" and session.status != "active":
            return MessageReply(error=BusError(code="conflict", message="session archived"))
        record = MessageRecord(
            id=uuid.uuid4(),
            session_id=req.session_id,
            user_id=req.user_id,
            role=req.role,
            content=req.content,
            created_at=self.tick(),
            job_id=req.job_id,
        )
        self.messages[req.session_id].append(record)
        self.sessions[session.id] = session.model_copy(
            update={"message_count": session.message_count + 1}
        )
        return MessageReply(message=record, created=True, persona=session.persona)

    def list_messages(self, req: ListMessages) -> MessagePage:
        """Return a page of a session's messages, newest first."""
        session = self.sessions.get(req.session_id)
        if session is None or session.user_id != req.user_id:
            return MessagePage(error=BusError(code="not_found", message="no such session"))
        rows = list(reversed(self.messages[req.session_id]))
        if (start := offset(req.cursor)) is None:
            return MessagePage(error=BusError(code="invalid", message="malformed cursor"))
        end = start + req.limit
        return MessagePage(
            items=tuple(rows[start:end]), next_cursor=str(end) if end < len(rows) else None
        )

    def archive_session(self, req: ArchiveSession) -> SessionReply:
        """Archive a session of the user; an archived one is returned unchanged."""
        found = self.sessions.get(req.session_id)
        if found is None or found.user_id != req.user_id:
            return SessionReply(error=BusError(code="not_found", message="no such session"))
        if found.status == "active":
            now = utcnow()
            found = found.model_copy(
                update={"status": "archived", "archived_at": now, "updated_at": now}
            )
            self.sessions[found.id] = found
        return SessionReply(session=found)

    def delete_session(self, req: DeleteSession) -> DeleteReply:
        """Delete a session of the user with its messages."""
        found = self.sessions.get(req.session_id)
        if found is None or found.user_id != req.user_id:
            return DeleteReply(error=BusError(code="not_found", message="no such session"))
        del self.sessions[req.session_id]
        del self.messages[req.session_id]
        return DeleteReply(deleted=True)

    def list_feed(self, req: ListFeed) -> MessagePage:
        """Return a page of the user's messages across sessions, newest first."""
        start = offset(req.cursor)
        if start is None:
            return MessagePage(error=BusError(code="invalid", message="malformed cursor"))
        rows = sorted(
            (m for ms in self.messages.values() for m in ms if m.user_id == req.user_id),
            key=lambda m: m.created_at,
            reverse=True,
        )
        end = start + req.limit
        return MessagePage(
            items=tuple(rows[start:end]), next_cursor=str(end) if end < len(rows) else None
        )

    @staticmethod
    def ping(_: Ping) -> Pong:
        """Answer a ping."""
        return Pong(service="history", instance="fake")

    def handlers(self) -> dict[str, tuple[type[Contract], Callable[[Any], Reply]]]:
        """Map each history subject to its request type and handler."""
        return {
            subjects.HISTORY_SESSION_CREATE: (CreateSession, self.create_session),
            subjects.HISTORY_SESSION_GET: (GetSession, self.get_session),
            subjects.HISTORY_SESSION_LIST: (ListSessions, self.list_sessions),
            subjects.HISTORY_MESSAGE_APPEND: (AppendMessage, self.append_message),
            subjects.HISTORY_MESSAGE_LIST: (ListMessages, self.list_messages),
            subjects.HISTORY_SESSION_ARCHIVE: (ArchiveSession, self.archive_session),
            subjects.HISTORY_SESSION_DELETE: (DeleteSession, self.delete_session),
            subjects.HISTORY_FEED: (ListFeed, self.list_feed),
            subjects.HISTORY_PING: (Ping, self.ping),
        }


class FakeMemory:
    """The memory service's recall and delete over a dict."""

    def __init__(self) -> None:
        self.memories: dict[UUID, MemoryRecord] = {}

    def add(self, user_id: str, session_id: UUID, persona: str, content: str) -> MemoryRecord:
        """Store a memory as generation would."""
        record = MemoryRecord(
            id=uuid.uuid4(),
            user_id=user_id,
            session_id=session_id,
            persona=persona,
            content=content,
            created_at=utcnow() + timedelta(microseconds=len(self.memories)),
        )
        self.memories[record.id] = record
        return record

    def recall(self, req: RecallMemories) -> MemoryPage:
        """Return a page of the user's memories, newest first, by persona and text."""
        start = offset(req.cursor)
        if start is None:
            return MemoryPage(error=BusError(code="invalid", message="malformed cursor"))
        query = (req.query or "").casefold()
        rows = sorted(
            (
                m
                for m in self.memories.values()
                if m.user_id == req.user_id
                and (req.persona is None or m.persona == req.persona)
                and query in m.content.casefold()
            ),
            key=lambda m: m.created_at,
            reverse=True,
        )
        end = start + req.limit
        return MemoryPage(
            items=tuple(rows[start:end]), next_cursor=str(end) if end < len(rows) else None
        )

    def delete(self, req: DeleteMemory) -> MemoryDeleted:
        """Delete a memory of the user."""
        found = self.memories.get(req.memory_id)
        if found is None or found.user_id != req.user_id:
            return MemoryDeleted(error=BusError(code="not_found", message="no such memory"))
        del self.memories[req.memory_id]
        return MemoryDeleted(deleted=True)

    def handlers(self) -> dict[str, tuple[type[Contract], Callable[[Any], Reply]]]:
        """Map each memory subject to its request type and handler."""
        return {
            subjects.MEMORY_RECALL: (RecallMemories, self.recall),
            subjects.MEMORY_DELETE: (DeleteMemory, self.delete),
        }


def offset(cursor: str | None) -> int | None:
    """Read a fake cursor (an offset); None when it is malformed."""
    if cursor is None:
        return 0
    return int(cursor) if cursor.isascii() and cursor.isdigit() else None  # "²" is a digit


@dataclass
class Published:
    """One message the gateway published."""

    subject: str
    body: Contract
    meta: RequestMeta
    stream: str | None
    msg_id: str | None


@dataclass
class FakeBus:
    """The gateway's bus in memory: handlers by subject, a job dict, a list of publications."""

    history: FakeHistory = field(default_factory=FakeHistory)
    memory: FakeMemory = field(default_factory=FakeMemory)
    connected: bool = True
    failures: dict[str, Exception] = field(default_factory=dict)
    extra: dict[str, Callable[[Any], Reply]] = field(default_factory=dict)
    jobs: dict[UUID, tuple[JobState, int]] = field(default_factory=dict)
    published: list[Published] = field(default_factory=list)
    calls: list[tuple[str, RequestMeta]] = field(default_factory=list)
    lanes_kv: FakeKV = field(default_factory=FakeKV)
    rates_kv: FakeKV = field(default_factory=FakeKV)
    rate_clock: Callable[[], float] = time.time
    feeds: dict[UUID, list[JobFeed]] = field(default_factory=dict)
    feeds_opened: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _published: asyncio.Event = field(default_factory=asyncio.Event)
    _followed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def lanes(self) -> Lanes:
        """Return the real lanes logic over the in-memory bucket."""
        return Lanes(cast(KeyValue, self.lanes_kv))

    async def request(
        self,
        subject: str,
        body: Contract,
        reply_type: type[R],
        meta: RequestMeta,
        timeout: float | None = None,
    ) -> R:
        """Answer from the fake history or an extra handler, or fail as told."""
        self.calls.append((subject, meta))
        if subject in self.failures:
            raise self.failures[subject]
        if subject in self.extra:
            reply = self.extra[subject](body)
        elif subject in (routes := {**self.history.handlers(), **self.memory.handlers()}):
            reply = routes[subject][1](body)
        else:
            raise BusUnavailable(f"no service answers {subject}")
        return reply_type.model_validate_json(reply.model_dump_json())

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
        """Record the publication, or fail as told."""
        self.calls.append((subject, meta))
        if subject in self.failures:
            raise self.failures[subject]
        self.published.append(Published(subject, body, meta, stream, msg_id))
        self._published.set()

    async def next_publication(self, timeout: float = 10.0) -> Published:
        """Wait for the first publication and return it."""
        await asyncio.wait_for(self._published.wait(), timeout)
        return self.published[0]

    async def published_on(self, subject: str, timeout: float = 10.0) -> Published:
        """Wait for the first publication on ``subject`` and return it."""
        async with asyncio.timeout(timeout):
            while not (found := [p for p in self.published if p.subject == subject]):
                self._published.clear()
                await self._published.wait()
        return found[0]

    async def get_job(self, job_id: UUID) -> tuple[JobState, int] | None:
        """Return a job and its revision."""
        return self.jobs.get(job_id)

    async def create_job(self, state: JobState) -> int | None:
        """Store a new job unless the id is taken."""
        if state.id in self.jobs:
            return None
        self._store(state, 1)
        return 1

    async def update_job(self, state: JobState, revision: int) -> int | None:
        """Replace a job at the expected revision."""
        self._fail_if_told("update_job")
        current = self.jobs.get(state.id)
        if current is None or current[1] != revision:
            return None
        self._store(state, revision + 1)
        return revision + 1

    async def delete_job(self, job_id: UUID, revision: int) -> bool:
        """Delete a job at the expected revision."""
        current = self.jobs.get(job_id)
        if current is None or current[1] != revision:
            return False
        del self.jobs[job_id]
        return True

    @asynccontextmanager
    async def follow_job(self, job_id: UUID) -> AsyncIterator[JobFeed]:
        """Feed the job's current state, then every later write and delta, until closed."""
        feed = JobFeed()
        if (current := self.jobs.get(job_id)) is not None:
            feed.put(current)
        self.feeds.setdefault(job_id, []).append(feed)
        self.feeds_opened += 1
        self._followed.set()
        try:
            yield feed
        finally:
            self.feeds[job_id].remove(feed)

    def open_feeds(self) -> int:
        """Count the feeds not closed yet."""
        return sum(len(feeds) for feeds in self.feeds.values())

    async def followed(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``count`` feeds have been opened in all."""
        async with asyncio.timeout(timeout):
            while self.feeds_opened < count:
                self._followed.clear()
                await self._followed.wait()

    def publish_delta(self, job_id: UUID, seq: int, text: str) -> None:
        """Publish a piece of the reply as the agent would."""
        for feed in self.feeds.get(job_id, []):
            feed.put(ChatDelta(job_id=job_id, seq=seq, text=text))

    async def append_to_lane(self, key: str, job_id: UUID, limit: int | None = None) -> JobLane:
        """Append to a lane in the in-memory bucket."""
        self._fail_if_told("lanes")
        return await self.lanes.append(key, job_id, limit)

    async def change_lane(self, key: str, edit: Callable[[JobLane], JobLane]) -> JobLane:
        """Change a lane in the in-memory bucket."""
        self._fail_if_told("lanes")
        return await self.lanes.change(key, edit)

    async def remove_from_lane(self, key: str, job_id: UUID) -> JobLane:
        """Remove from a lane in the in-memory bucket."""
        self._fail_if_told("lanes")
        return await self.lanes.remove(key, job_id)

    async def prune_lane(
        self, key: str, is_finished: Callable[[UUID], Awaitable[bool]]
    ) -> JobLane:
        """Prune a lane in the in-memory bucket."""
        self._fail_if_told("lanes")
        return await self.lanes.prune(key, is_finished)

    async def take_rate(self, key: str, limit: int, window: float) -> RateDecision:
        """Take a slot of a sliding window in the in-memory bucket."""
        self._fail_if_told("rates")
        window_kv = SlidingWindow(cast(KeyValue, self.rates_kv), self.rate_clock)
        return await window_kv.take(key, limit, window)

    def lane(self, key: str) -> tuple[UUID, ...]:
        """Return the jobs of a lane."""
        entry = self.lanes_kv.entries.get(key)
        return JobLane.model_validate_json(entry.value).jobs if entry else ()

    def _fail_if_told(self, operation: str) -> None:
        if operation in self.failures:
            raise self.failures[operation]

    async def watch_job(self, job_id: UUID, timeout: float) -> JobState | None:
        """Wait for the job to end, waking on every change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            current = self.jobs.get(job_id)
            if current is not None and current[0].finished:
                return current[0]
            remaining = deadline - loop.time()
            if remaining <= 0:
                return current[0] if current else None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def set_job(self, state: JobState) -> None:
        """Write a job's state as the agent would."""
        revision = self.jobs[state.id][1] + 1 if state.id in self.jobs else 1
        self._store(state, revision)

    def _store(self, state: JobState, revision: int) -> None:
        self.jobs[state.id] = (state, revision)
        for feed in self.feeds.get(state.id, []):
            feed.put((state, revision))
        self._changed.set()


SECRET = "unit-test-secret-that-is-long-enough-for-hs256"


def make_settings(**overrides: Any) -> Settings:
    """Build gateway settings for a test, independent of the environment."""
    values: dict[str, Any] = {
        "jwt_secret": SECRET,
        "jwt_audience": None,
        "jwt_issuer": None,
        "nats_url": "nats://127.0.0.1:1",
        "bus_request_timeout": 2.0,
        "max_content_bytes": 32_768,
        "max_wait_seconds": 60.0,
    }
    values.update(overrides)
    return Settings(**values)


def bearer(user: str = "alice", *, secret: str = SECRET, **kwargs: Any) -> dict[str, str]:
    """Return the Authorization header of a fresh token for ``user``."""
    return {"Authorization": f"Bearer {mint_token(secret, user, **kwargs)}"}


@asynccontextmanager
async def gateway_client(
    bus: FakeBus | None = None, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """Serve a gateway over ``bus`` to an in-process HTTP client."""
    app = create_app(make_settings(**overrides), bus=bus if bus is not None else FakeBus())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client, app

