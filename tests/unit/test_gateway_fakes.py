"""In-memory stand-ins for the gateway's tests: history and memory over dicts, and a bus.

:class:`FakeHistory` admits user messages as the real history does in its append
(limits, the job a new one follows, multitask) and keeps what its outbox would
announce on ``chat.requested``; :class:`FakeBus` is the gateway's whole I/O edge
(request-reply, the job bucket, the cancel bucket, the JOB_EVENTS stream) and
plays the agent in tests (``start``, ``delta``, ``finish``). Holds no tests of its
own; the gateway's unit and integration tests import it.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import httpx
from fastapi import FastAPI
from pydantic import BaseModel

from contracts import subjects
from contracts.base import BusError, Contract, Ping, Pong, Reply, utcnow
from contracts.chat import (
    CancelRequest,
    ChatDelta,
    FinalStatus,
    JobError,
    JobState,
    RequestChat,
    ToolCalled,
    ToolReturned,
)
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
from services.gateway.bus import EventFeed, StoredEvent
from services.gateway.config import Settings
from services.runtime.kv import KvConflict
from services.runtime.meta import BusUnavailable, RequestMeta

R = TypeVar("R", bound=Reply)
JOBS_RETRY_AFTER = 2.5  # what the fake history tells a user over the job limit


@dataclass
class Admitted:
    """A job history admitted, and whether it has ended (reply stored, or told so)."""

    user_id: str
    session_id: UUID
    follows: UUID | None
    ended: bool = False


class FakeHistory:
    """The history service's request-reply behaviour over dicts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.sessions: dict[UUID, SessionRecord] = {}
        self.messages: dict[UUID, list[MessageRecord]] = {}
        self.jobs: dict[UUID, Admitted] = {}  # in the order admitted
        self.sent: dict[str, list[float]] = {}  # user -> when each message was admitted
        self.requested: list[RequestChat] = []  # what the outbox announced on chat.requested
        self.clock = clock
        self.last = utcnow()
        self._announced = asyncio.Event()

    def tick(self) -> datetime:
        """Return the time now, strictly after the last one handed out (newest first is exact)."""
        self.last = max(utcnow(), self.last + timedelta(microseconds=1))
        return self.last

    async def next_request(self, timeout: float = 10.0) -> RequestChat:
        """Wait until a job is announced on chat.requested; return the first one."""
        await asyncio.wait_for(self._announced.wait(), timeout)
        return self.requested[0]

    def unfinished(
        self, *, user_id: str | None = None, session_id: UUID | None = None
    ) -> list[UUID]:
        """Return the ids of the jobs not ended, of a user or of a session, oldest first."""
        return [
            job_id for job_id, job in self.jobs.items()
            if not job.ended
            and (user_id is None or job.user_id == user_id)
            and (session_id is None or job.session_id == session_id)
        ]

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
        """Store a message once per (job, role); admit the job of a user message."""
        session = self.sessions.get(req.session_id)
        if session is None or session.user_id != req.user_id:
            return MessageReply(error=BusError(code="not_found", message="no such session"))
        for old in self.messages[req.session_id]:
            if old.job_id == req.job_id and old.role == req.role:
                known = self.jobs.get(req.job_id)
                return MessageReply(
                    message=old, created=False, persona=session.persona,
                    follows=known.follows if known else None,
                )
        follows, interrupted = None, ()
        if req.role == "user":
            if session.status != "active":
                return MessageReply(error=BusError(code="conflict", message="session archived"))
            if req.admission is None:
                return MessageReply(error=BusError(code="invalid", message="no admission"))
            refused = self._refusal(req)
            if refused is not None:
                return MessageReply(error=refused)
            earlier = self.unfinished(session_id=req.session_id)
            if req.admission.multitask == "reject" and earlier:
                return MessageReply(error=BusError(code="conflict", message="session is busy"))
            if req.admission.multitask == "interrupt":
                interrupted = tuple(earlier)
            follows = earlier[-1] if earlier else None
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
        if req.role == "assistant":
            if (job := self.jobs.get(req.job_id)) is not None:
                job.ended = True
        elif req.admission is not None:
            self._admit(req, record, session.persona, follows)
        return MessageReply(
            message=record, created=True, persona=session.persona, follows=follows,
            interrupted=interrupted,
        )

    def _refusal(self, req: AppendMessage) -> BusError | None:
        """Check the user's limits as history does; None when the message may be admitted."""
        assert req.admission is not None
        admission, now = req.admission, self.clock()
        if 0 < admission.max_active_jobs <= len(self.unfinished(user_id=req.user_id)):
            return BusError(
                code="too_many_jobs", message="too many unfinished jobs",
                retry_after=JOBS_RETRY_AFTER,
            )
        recent = [
            at for at in self.sent.get(req.user_id, [])
            if now - at < subjects.RATE_WINDOW_SECONDS
        ]
        if 0 < admission.max_messages_per_minute <= len(recent):
            wait = subjects.RATE_WINDOW_SECONDS - (now - recent[0])
            return BusError(code="rate_limited", message="too many messages", retry_after=wait)
        return None

    def _admit(
        self, req: AppendMessage, record: MessageRecord, persona: str, follows: UUID | None
    ) -> None:
        assert req.admission is not None
        self.jobs[req.job_id] = Admitted(req.user_id, req.session_id, follows)
        self.sent.setdefault(req.user_id, []).append(self.clock())
        self.requested.append(RequestChat(
            job_id=req.job_id, user_id=req.user_id, session_id=req.session_id,
            persona=persona, message_id=record.id, content=req.content,
            created_at=req.admission.created_at, follows=follows,
            revision=req.admission.revision,
        ))
        self._announced.set()

    def end_job(self, req: EndJob) -> JobEnded:
        """Note that a job ended without a reply."""
        job = self.jobs.get(req.job_id)
        if job is None or job.user_id != req.user_id:
            return JobEnded(known=False)
        job.ended = True
        return JobEnded(known=True)

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
        unfinished = tuple(self.unfinished(session_id=req.session_id))
        del self.sessions[req.session_id]
        del self.messages[req.session_id]
        return DeleteReply(deleted=True, unfinished=unfinished)

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
            subjects.HISTORY_JOB_END: (EndJob, self.end_job),
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


class FakeFeed:
    """A job's stored events after a position, then live ones, read one at a time."""

    def __init__(self, bus: "FakeBus", job_id: UUID, after: int) -> None:
        self.bus = bus
        self.job_id = job_id
        self.position = after

    async def next(self, timeout: float) -> StoredEvent | None:
        """Return the next event of the job, or None when ``timeout`` passes first."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for job_id, event in self.bus.events:
                        if job_id == self.job_id and event.seq > self.position:
                            self.position = event.seq
                            return event
                    self.bus._emitted.clear()
                    await self.bus._emitted.wait()
        except TimeoutError:
            return None


@dataclass
class FakeBus:
    """The gateway's bus in memory: handlers by subject, two buckets, the job events stream.

    ``failures`` maps a subject, or an operation name (``create_job``, ``get_job``,
    ``delete_job``, ``wait_job``, ``request_cancel``, ``follow_job``), to the error it
    raises. ``ops`` records every call in order: round trips are counted by it.
    """

    history: FakeHistory = field(default_factory=FakeHistory)
    memory: FakeMemory = field(default_factory=FakeMemory)
    connected: bool = True
    failures: dict[str, Exception] = field(default_factory=dict)
    extra: dict[str, Callable[[Any], Reply]] = field(default_factory=dict)
    jobs: dict[UUID, JobState] = field(default_factory=dict)
    revisions: dict[UUID, int] = field(default_factory=dict)
    cancels: dict[UUID, CancelRequest] = field(default_factory=dict)
    events: list[tuple[UUID, StoredEvent]] = field(default_factory=list)
    calls: list[tuple[str, RequestMeta]] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    feeds_opened: int = 0
    feeds_open: int = 0
    revision: int = 0
    seq: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _emitted: asyncio.Event = field(default_factory=asyncio.Event)
    _cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    _followed: asyncio.Event = field(default_factory=asyncio.Event)

    # ---- GatewayBus ---------------------------------------------------------------------

    async def request(
        self,
        subject: str,
        body: Contract,
        reply_type: type[R],
        meta: RequestMeta,
        timeout: float | None = None,
    ) -> R:
        """Answer from the fake history or memory or an extra handler, or fail as told."""
        self.calls.append((subject, meta))
        self._op(subject)
        if subject in self.extra:
            reply = self.extra[subject](body)
        elif subject in (routes := {**self.history.handlers(), **self.memory.handlers()}):
            reply = routes[subject][1](body)
        else:
            raise BusUnavailable(f"no service answers {subject}")
        return reply_type.model_validate_json(reply.model_dump_json())

    async def get_job(self, job_id: UUID) -> JobState | None:
        """Return a job's state."""
        self._op("get_job")
        return self.jobs.get(job_id)

    async def create_job(self, state: JobState) -> int | None:
        """Store a new job unless the id is taken; return its revision."""
        self._op("create_job")
        if state.id in self.jobs:
            return None
        return self._store(state)

    async def delete_job(self, job_id: UUID, revision: int) -> None:
        """Delete a job still at ``revision``."""
        self._op("delete_job")
        if self.revisions.get(job_id) != revision:
            raise KvConflict(f"job {job_id} is not at revision {revision}")
        del self.jobs[job_id]
        del self.revisions[job_id]
        self._changed.set()

    async def wait_job(self, job_id: UUID, timeout: float) -> JobState | None:
        """Wait for the job to end, waking on every change; return its latest state."""
        self._op("wait_job")
        try:
            async with asyncio.timeout(timeout):
                while (current := self.jobs.get(job_id)) is None or not current.finished:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pass
        return self.jobs.get(job_id)

    async def request_cancel(self, request: CancelRequest) -> None:
        """Record a cancel request under the job id."""
        self._op("request_cancel")
        self.cancels[request.job_id] = request
        self._cancelled.set()

    @asynccontextmanager
    async def follow_job(self, job_id: UUID, after: int) -> AsyncIterator[EventFeed]:
        """Feed the job's events stored after ``after``, until closed."""
        self._op("follow_job")
        self.feeds_opened += 1
        self.feeds_open += 1
        self._followed.set()
        try:
            yield FakeFeed(self, job_id, after)
        finally:
            self.feeds_open -= 1

    # ---- the agent's side ---------------------------------------------------------------

    def set_job(self, state: JobState) -> JobState:
        """Write a job's state as the agent would."""
        self._store(state)
        return state

    def move(self, job_id: UUID, **update: Any) -> JobState:
        """Change a job's state as the agent would."""
        return self.set_job(self.jobs[job_id].model_copy(update=update))

    def emit(self, job_id: UUID, kind: str, body: BaseModel | bytes) -> int:
        """Store one event of a job in the stream; return its position."""
        self.seq += 1
        data = body if isinstance(body, bytes) else body.model_dump_json().encode()
        self.events.append((job_id, StoredEvent(self.seq, kind, data)))
        self._emitted.set()
        return self.seq

    def start(self, job_id: UUID) -> JobState:
        """Start the job's next attempt: its state, then its status event."""
        state = self.jobs[job_id]
        running = self.move(
            job_id, status="running", attempts=state.attempts + 1,
            started_at=state.started_at or utcnow(),
        )
        self.emit(job_id, "status", running)
        return running

    def requeue(self, job_id: UUID) -> JobState:
        """End an attempt that failed with attempts left: queued again, announced."""
        queued = self.move(job_id, status="queued")
        self.emit(job_id, "status", queued)
        return queued

    def delta(self, job_id: UUID, text: str) -> int:
        """Publish a piece of the reply of the job's current attempt."""
        attempt = max(1, self.jobs[job_id].attempts)
        return self.emit(job_id, "delta", ChatDelta(job_id=job_id, attempt=attempt, text=text))

    def tool(self, job_id: UUID, name: str, arguments: str, result: str) -> None:
        """Publish a tool call of the current attempt and what the tool answered."""
        attempt = max(1, self.jobs[job_id].attempts)
        call_id = f"call-{self.seq}"
        self.emit(job_id, "tool_call", ToolCalled(
            job_id=job_id, attempt=attempt, call_id=call_id, name=name, arguments=arguments,
        ))
        self.emit(job_id, "tool_result", ToolReturned(
            job_id=job_id, attempt=attempt, call_id=call_id, name=name, result=result,
        ))

    def finish(
        self, job_id: UUID, status: FinalStatus = "completed", text: str = "hello!",
        *, event: bool = True,
    ) -> JobState:
        """End the job as the agent does: reply or end noted in history, state, final event."""
        state = self.jobs[job_id]
        update: dict[str, Any] = {"status": status, "finished_at": utcnow()}
        if status == "completed":
            update["attempts"] = max(1, state.attempts)
            reply = self.history.append_message(AppendMessage(
                user_id=state.user_id, session_id=state.session_id, job_id=job_id,
                role="assistant", content=text,
            ))
            update["reply"] = reply.message
        else:
            self.history.end_job(EndJob(user_id=state.user_id, job_id=job_id))
            if status == "failed":
                update["error"] = JobError(code="llm_error", message="the model failed")
        final = self.move(job_id, **update)
        if event:
            self.emit(job_id, status, final)
        return final

    async def followed(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``count`` feeds have been opened in all."""
        async with asyncio.timeout(timeout):
            while self.feeds_opened < count:
                self._followed.clear()
                await self._followed.wait()

    async def cancel_requested(self, job_id: UUID, timeout: float = 10.0) -> CancelRequest:
        """Wait until a cancel of the job is requested; return the request."""
        async with asyncio.timeout(timeout):
            while job_id not in self.cancels:
                self._cancelled.clear()
                await self._cancelled.wait()
        return self.cancels[job_id]

    # ---- inside -------------------------------------------------------------------------

    def _op(self, name: str) -> None:
        self.ops.append(name)
        if name in self.failures:
            raise self.failures[name]

    def _store(self, state: JobState) -> int:
        self.revision += 1
        self.jobs[state.id] = state
        self.revisions[state.id] = self.revision
        self._changed.set()
        return self.revision


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

