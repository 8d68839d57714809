"""The agent's side of the bus: history requests and outcome events over a BusClient."""

from contracts import subjects
from contracts.chat import ChatCompleted, ChatDelta, ChatFailed
from contracts.deadletter import DeadLetter
from contracts.history import AppendMessage, ListMessages, MessagePage, MessageRecord, MessageReply
from services.agent.errors import EventError, HistoryError
from services.runtime.bus import BusClient, BusError, RequestMeta


class BusHistory:
    """Ask the history service for context and to store replies."""

    def __init__(self, bus: BusClient, timeout: float) -> None:
        self.bus = bus
        self.timeout = timeout

    async def list_messages(self, query: ListMessages, meta: RequestMeta) -> list[MessageRecord]:
        """Return a page of a session's messages, newest first."""
        try:
            page = await self.bus.request(
                subjects.HISTORY_MESSAGE_LIST, query, MessagePage, meta, timeout=self.timeout
            )
        except BusError as exc:
            raise HistoryError(f"history did not list messages: {exc}") from exc
        if page.error is not None:
            raise HistoryError(f"history refused to list messages: {page.error.message}")
        return list(page.items)

    async def append_message(self, command: AppendMessage, meta: RequestMeta) -> MessageRecord:
        """Store a message (idempotent on job and role) and return the stored record."""
        try:
            reply = await self.bus.request(
                subjects.HISTORY_MESSAGE_APPEND, command, MessageReply, meta, timeout=self.timeout
            )
        except BusError as exc:
            raise HistoryError(f"history did not store the reply: {exc}") from exc
        if reply.error is not None or reply.message is None:
            reason = reply.error.message if reply.error else "no message in the answer"
            raise HistoryError(f"history refused to store the reply: {reason}")
        return reply.message


class BusEvents:
    """Publish deltas (core NATS) and outcomes (JetStream) of jobs."""

    def __init__(self, bus: BusClient, timeout: float) -> None:
        self.bus = bus
        self.timeout = timeout

    async def delta(self, delta: ChatDelta, meta: RequestMeta) -> None:
        """Publish a piece of a reply; best effort, the final state is in the job store."""
        try:
            await self.bus.publish(subjects.chat_delta(str(delta.job_id)), delta, meta)
        except BusError as exc:
            raise EventError(f"delta not published: {exc}") from exc

    async def completed(self, event: ChatCompleted, meta: RequestMeta) -> None:
        """Store the ``chat.completed`` event (deduplicated per job)."""
        await self._store(
            subjects.CHAT_COMPLETED, event, meta,
            subjects.CHAT_EVENTS_STREAM.name, f"{event.job_id}.completed",
        )

    async def failed(self, event: ChatFailed, meta: RequestMeta) -> None:
        """Store the ``chat.failed`` event (deduplicated per job)."""
        await self._store(
            subjects.CHAT_FAILED, event, meta,
            subjects.CHAT_EVENTS_STREAM.name, f"{event.job_id}.failed",
        )

    async def dead_letter(self, letter: DeadLetter, meta: RequestMeta, msg_id: str | None) -> None:
        """Store a message the agent gave up on."""
        await self._store(
            subjects.deadletter(letter.service), letter, meta,
            subjects.DEADLETTER_STREAM.name, msg_id,
        )

    async def _store(
        self,
        subject: str,
        body: ChatCompleted | ChatFailed | DeadLetter,
        meta: RequestMeta,
        stream: str,
        msg_id: str | None,
    ) -> None:
        try:
            await self.bus.publish(
                subject, body, meta, stream=stream, msg_id=msg_id, timeout=self.timeout
            )
        except BusError as exc:
            raise EventError(f"{subject} not stored: {exc}") from exc
