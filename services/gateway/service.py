"""What the gateway does for a caller, over the bus and the job bucket (no HTTP here)."""

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

import structlog

from contracts import subjects
from contracts.base import Contract, Reply, utcnow
from contracts.chat import JobState
from contracts.history import (
    Admission,
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
    MessageReply,
    Multitask,
    SessionPage,
    SessionRecord,
    SessionReply,
    SessionStatus,
)
from contracts.memory import DeleteMemory, MemoryDeleted, MemoryPage, RecallMemories
from contracts.tools import ListTools, ToolList
from contracts.webhooks import (
    CreateEndpoint,
    DeleteEndpoint,
    DeliveryPage,
    DeliveryRecord,
    DeliveryReply,
    EndpointCreated,
    EndpointDeleted,
    EndpointPage,
    ListDeliveries,
    ListEndpoints,
    ResendDelivery,
    WebhookEvent,
)
from services.gateway.bus import GatewayBus
from services.gateway.errors import (
    Conflict,
    ContentTooLarge,
    GatewayError,
    Invalid,
    NotFound,
    from_reply,
)
from services.gateway.events import JobEvent, JobEvents
from services.gateway.jobs import Jobs
from services.runtime.meta import BusError, BusProtocolError, BusUnavailable, RequestMeta

R = TypeVar("R", bound=Reply)
C = TypeVar("C", bound=Contract | str)
log = structlog.get_logger("chatbus.gateway")

# Idempotency keys map to job ids through this namespace, scoped by user.
IDEMPOTENCY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://chatbus/idempotency-key")


@dataclass(frozen=True)
class Caller:
    """Who asks, and the id of the HTTP request that asks."""

    user_id: str
    request_id: str


@dataclass(frozen=True)
class Submission:
    """The job a posted message became; ``created`` is False for an idempotent repeat."""

    job: JobState
    created: bool


def job_id_for(user_id: str, idempotency_key: str | None) -> UUID:
    """Derive the job id from the user's idempotency key, or pick a fresh one."""
    if idempotency_key is None:
        return uuid.uuid4()
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{user_id}:{idempotency_key}")


class GatewayService:
    """Sessions, messages and jobs of one caller at a time, over a :class:`GatewayBus`."""

    def __init__(
        self,
        bus: GatewayBus,
        *,
        timeout: float,
        max_content_bytes: int,
        max_active_jobs: int = 8,
        max_messages_per_minute: int = 0,
        cancel_wait: float = 2.0,
    ) -> None:
        self.bus = bus
        self.timeout = timeout
        self.max_content_bytes = max_content_bytes
        self.max_active_jobs = max_active_jobs
        self.max_messages_per_minute = max_messages_per_minute
        self.jobs = Jobs(bus, cancel_wait=cancel_wait)

    async def create_session(
        self, caller: Caller, persona: str, title: str | None
    ) -> SessionRecord:
        """Create a session; history archives the caller's previous active one of the persona."""
        body = CreateSession(user_id=caller.user_id, persona=persona, title=title)
        reply = await self._ask(caller, subjects.HISTORY_SESSION_CREATE, body, SessionReply)
        return _required(reply.session, subjects.HISTORY_SESSION_CREATE)

    async def get_session(self, caller: Caller, session_id: UUID) -> SessionRecord:
        """Return one of the caller's sessions."""
        body = GetSession(user_id=caller.user_id, session_id=session_id)
        reply = await self._ask(caller, subjects.HISTORY_SESSION_GET, body, SessionReply)
        return self._own_session(_required(reply.session, subjects.HISTORY_SESSION_GET), caller)

    async def list_sessions(
        self,
        caller: Caller,
        status: SessionStatus | None,
        persona: str | None,
        limit: int,
        cursor: str | None,
    ) -> SessionPage:
        """Return a page of the caller's sessions, newest first."""
        body = ListSessions(
            user_id=caller.user_id, status=status, persona=persona, limit=limit, cursor=cursor
        )
        return await self._page(caller, subjects.HISTORY_SESSION_LIST, body, SessionPage)

    async def archive_session(self, caller: Caller, session_id: UUID) -> SessionRecord:
        """Archive one of the caller's sessions (history then queues its memories)."""
        body = ArchiveSession(user_id=caller.user_id, session_id=session_id)
        reply = await self._ask(caller, subjects.HISTORY_SESSION_ARCHIVE, body, SessionReply)
        return self._own_session(_required(reply.session, subjects.HISTORY_SESSION_ARCHIVE), caller)

    async def delete_session(self, caller: Caller, session_id: UUID) -> None:
        """Delete a session with its messages and memories; cancel its unfinished jobs."""
        body = DeleteSession(user_id=caller.user_id, session_id=session_id)
        reply = await self._ask(caller, subjects.HISTORY_SESSION_DELETE, body, DeleteReply)
        await self.jobs.request_cancel(caller.user_id, list(reply.unfinished))

    async def list_feed(self, caller: Caller, limit: int, cursor: str | None) -> MessagePage:
        """Return a page of the caller's messages across all sessions, newest first."""
        body = ListFeed(user_id=caller.user_id, limit=limit, cursor=cursor)
        return await self._page(caller, subjects.HISTORY_FEED, body, MessagePage)

    async def recall_memories(
        self,
        caller: Caller,
        persona: str | None,
        query: str | None,
        limit: int,
        cursor: str | None,
    ) -> MemoryPage:
        """Return a page of the caller's memories, newest first, by persona and text."""
        body = RecallMemories(
            user_id=caller.user_id, persona=persona, query=query, limit=limit, cursor=cursor
        )
        return await self._page(caller, subjects.MEMORY_RECALL, body, MemoryPage)

    async def delete_memory(self, caller: Caller, memory_id: UUID) -> None:
        """Delete one of the caller's memories."""
        body = DeleteMemory(user_id=caller.user_id, memory_id=memory_id)
        await self._ask(caller, subjects.MEMORY_DELETE, body, MemoryDeleted)

    async def list_tools(self, caller: Caller) -> ToolList:
        """Return the tools the model can call now, as an agent replica sees them."""
        return await self._ask(
            caller, subjects.AGENT_TOOLS_LIST, ListTools(user_id=caller.user_id), ToolList
        )

    async def create_webhook(
        self, caller: Caller, url: str, events: tuple[WebhookEvent, ...], description: str | None
    ) -> EndpointCreated:
        """Register a webhook endpoint of the caller; the reply has its secret."""
        body = CreateEndpoint(
            user_id=caller.user_id, url=url, events=events, description=description
        )
        try:
            return await self._ask(caller, subjects.WEBHOOKS_ENDPOINT_CREATE, body, EndpointCreated)
        except Invalid as exc:
            raise Invalid(exc.detail, loc=("body", "url")) from exc

    async def list_webhooks(self, caller: Caller, limit: int, cursor: str | None) -> EndpointPage:
        """Return a page of the caller's webhook endpoints, newest first."""
        body = ListEndpoints(user_id=caller.user_id, limit=limit, cursor=cursor)
        return await self._page(caller, subjects.WEBHOOKS_ENDPOINT_LIST, body, EndpointPage)

    async def delete_webhook(self, caller: Caller, endpoint_id: UUID) -> None:
        """Delete one of the caller's webhook endpoints."""
        body = DeleteEndpoint(user_id=caller.user_id, endpoint_id=endpoint_id)
        await self._ask(caller, subjects.WEBHOOKS_ENDPOINT_DELETE, body, EndpointDeleted)

    async def list_deliveries(
        self, caller: Caller, endpoint_id: UUID, limit: int, cursor: str | None
    ) -> DeliveryPage:
        """Return a page of an endpoint's deliveries, newest first."""
        body = ListDeliveries(
            user_id=caller.user_id, endpoint_id=endpoint_id, limit=limit, cursor=cursor
        )
        return await self._page(caller, subjects.WEBHOOKS_DELIVERY_LIST, body, DeliveryPage)

    async def resend_delivery(
        self, caller: Caller, endpoint_id: UUID, delivery_id: UUID
    ) -> DeliveryRecord:
        """Queue a delivery's event to its endpoint again."""
        body = ResendDelivery(
            user_id=caller.user_id, endpoint_id=endpoint_id, delivery_id=delivery_id
        )
        reply = await self._ask(caller, subjects.WEBHOOKS_DELIVERY_RESEND, body, DeliveryReply)
        if reply.delivery is None:
            raise BusProtocolError("resend answered without the delivery")
        return reply.delivery

    async def list_messages(
        self, caller: Caller, session_id: UUID, limit: int, cursor: str | None
    ) -> MessagePage:
        """Return a page of a session's messages, newest first."""
        body = ListMessages(
            user_id=caller.user_id, session_id=session_id, limit=limit, cursor=cursor
        )
        return await self._page(caller, subjects.HISTORY_MESSAGE_LIST, body, MessagePage)

    async def get_job(self, caller: Caller, job_id: UUID) -> JobState:
        """Return one of the caller's jobs."""
        return await self.jobs.load(caller.user_id, job_id)

    async def cancel_job(self, caller: Caller, job_id: UUID) -> JobState:
        """Cancel one of the caller's unfinished jobs and return its latest state."""
        return await self.jobs.cancel(caller.user_id, job_id)

    def job_events(self, job: JobState, last_event_id: str | None) -> AsyncIterator[JobEvent]:
        """Stream a job's events (ownership is checked by :meth:`get_job` beforehand)."""
        return JobEvents(self.bus, job, last_event_id).stream()

    async def submit_message(
        self,
        caller: Caller,
        session_id: UUID,
        content: str,
        idempotency_key: str | None,
        multitask: Multitask = "enqueue",
    ) -> Submission:
        """Create the job, then have history admit the message; at most once per key.

        Two round trips: the job record, and history's append, which checks the
        limits, names the job this one follows and queues the job in the same
        transaction. A refused message leaves nothing behind.
        """
        if len(content.encode()) > self.max_content_bytes:
            raise ContentTooLarge(f"content is over {self.max_content_bytes} bytes")
        job_id = job_id_for(caller.user_id, idempotency_key)
        job = JobState(
            id=job_id, user_id=caller.user_id, session_id=session_id, status="queued",
            created_at=utcnow(),
        )
        revision = await self.bus.create_job(job)
        if revision is None:
            return await self._repeat(caller, job, content, multitask)
        try:
            await self._admit(caller, job, revision, content, multitask)
        except (GatewayError, BusUnavailable):
            # Refused, or no history answered at all: nothing was stored. (After a timeout
            # history may have stored it and queued the job: the record stays for it.)
            await self._discard(job, revision)
            raise
        return Submission(job, created=True)

    async def wait_for(self, job: JobState, seconds: float) -> JobState:
        """Wait up to ``seconds`` for the job to end; return its latest known state."""
        if job.finished or seconds <= 0:
            return job
        try:
            return await self.bus.wait_job(job.id, seconds) or job
        except BusError as exc:
            # The job is queued either way; the client can still poll it.
            log.warning("could not watch the job", job_id=str(job.id), error=str(exc))
            return job

    async def _admit(
        self, caller: Caller, job: JobState, revision: int, content: str, multitask: Multitask
    ) -> None:
        """Store the user's message; history queues the job in the same transaction."""
        admission = Admission(
            revision=revision, created_at=job.created_at, multitask=multitask,
            max_active_jobs=self.max_active_jobs,
            max_messages_per_minute=self.max_messages_per_minute,
        )
        append = AppendMessage(
            user_id=caller.user_id, session_id=job.session_id, job_id=job.id, role="user",
            content=content, admission=admission,
        )
        reply = await self._ask(caller, subjects.HISTORY_MESSAGE_APPEND, append, MessageReply)
        _required(reply.message, subjects.HISTORY_MESSAGE_APPEND)
        if reply.interrupted:
            await self.jobs.request_cancel(caller.user_id, list(reply.interrupted))

    async def _repeat(
        self, caller: Caller, job: JobState, content: str, multitask: Multitask
    ) -> Submission:
        """Answer a repeated idempotency key with its job, admitting it if the first try did not."""
        found = await self.bus.get_job(job.id)
        if found is None:
            raise Conflict("a request with this Idempotency-Key is being refused; retry")
        found = self._owned(found, caller)
        if found.session_id != job.session_id:
            raise Conflict("this Idempotency-Key was used for another session")
        if found.status == "queued" and found.attempts == 0:
            # The first request may have died before history stored the message: the
            # append is idempotent, so sending it again admits the job at most once.
            await self._admit(caller, found, 0, content, multitask)
        return Submission(found, created=False)

    async def _discard(self, job: JobState, revision: int) -> None:
        """Delete a job history refused, so its key (an idempotency key) can be used again."""
        try:
            await self.bus.delete_job(job.id, revision)
        except BusError as exc:
            log.warning("could not discard a refused job", job_id=str(job.id), error=str(exc))

    async def _ask(self, caller: Caller, subject: str, body: Contract, reply_type: type[R]) -> R:
        reply = await self.bus.request(subject, body, reply_type, self._meta(caller), self.timeout)
        if reply.error is not None:
            raise from_reply(reply.error)
        return reply

    async def _page(
        self, caller: Caller, subject: str, body: Contract, reply_type: type[R]
    ) -> R:
        try:
            return await self._ask(caller, subject, body, reply_type)
        except Invalid as exc:
            # Every other parameter was validated here; only the opaque cursor can be refused.
            raise Invalid(exc.detail, loc=("query", "cursor")) from exc

    def _meta(self, caller: Caller) -> RequestMeta:
        return RequestMeta(caller.request_id, caller.user_id, time.time() + self.timeout)

    @staticmethod
    def _own_session(session: SessionRecord, caller: Caller) -> SessionRecord:
        # History checks ownership too; a reply naming another user is never shown.
        if session.user_id != caller.user_id:
            raise NotFound("no such session")
        return session

    @staticmethod
    def _owned(job: JobState, caller: Caller) -> JobState:
        if job.user_id != caller.user_id:
            raise NotFound("no such job")
        return job


def _required(value: C | None, subject: str) -> C:
    if value is None:
        raise BusProtocolError(f"{subject} answered neither a result nor an error")
    return value
