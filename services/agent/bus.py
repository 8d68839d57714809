"""The agent's side of the bus: history requests, and the job's events on its own subject."""

from collections.abc import Awaitable
from typing import TypeVar

import nats.errors
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel

from contracts import subjects
from contracts.base import Contract, Reply
from contracts.chat import ChatDelta, JobState, ToolCalled, ToolReturned
from contracts.history import (
    AppendMessage,
    EndJob,
    JobEnded,
    ListMessages,
    MessagePage,
    MessageRecord,
    MessageReply,
)
from services.agent.errors import EventError, HistoryError, SessionGone
from services.runtime.bus import BusClient
from services.runtime.meta import BusError, Refused, RequestMeta

R = TypeVar("R", bound=Reply)


class BusHistory:
    """Ask the history service for context, to store replies and to close jobs."""

    def __init__(self, bus: BusClient, timeout: float) -> None:
        self.bus = bus
        self.timeout = timeout

    async def list_messages(self, query: ListMessages, meta: RequestMeta) -> list[MessageRecord]:
        """Return a page of a session's messages, newest first."""
        page = await self._ask(subjects.HISTORY_MESSAGE_LIST, query, MessagePage, meta)
        return list(page.items)

    async def append_message(self, command: AppendMessage, meta: RequestMeta) -> MessageRecord:
        """Store a message (idempotent on job and role) and return the stored record."""
        reply = await self._ask(subjects.HISTORY_MESSAGE_APPEND, command, MessageReply, meta)
        if reply.message is None:
            raise HistoryError("history answered the append without a message")
        return reply.message

    async def end_job(self, command: EndJob, meta: RequestMeta) -> None:
        """Tell history a job ended without a reply (idempotent)."""
        await self._ask(subjects.HISTORY_JOB_END, command, JobEnded, meta)

    async def _ask(self, subject: str, body: Contract, reply_type: type[R], meta: RequestMeta) -> R:
        """Send one request; translate the bus's errors and history's refusals once."""
        try:
            return await self.bus.ask(subject, body, reply_type, meta, timeout=self.timeout)
        except Refused as exc:
            if exc.error.code == "not_found":
                raise SessionGone(str(exc)) from exc
            raise HistoryError(str(exc)) from exc
        except BusError as exc:
            raise HistoryError(f"{subject}: {exc}") from exc


class JobEventPublisher:
    """Publish a job's events on ``chat.job.<id>.<kind>``, in the order they happen.

    Status, deltas and tool events are plain publishes on one connection: the server
    stores them in the JOB_EVENTS stream in the order sent, at no round trip each. The
    final event waits for the stream's ack (deduplicated per job), so a job is acked
    only once its end is replayable.
    """

    def __init__(self, broker: NatsBroker, timeout: float) -> None:
        self.broker = broker
        self.timeout = timeout

    @property
    def connection(self) -> Client:
        """Return the broker's connection (there once the broker is connected)."""
        return self.broker.connection

    @property
    def js(self) -> JetStreamContext:
        """Return the JetStream context of the connection."""
        return self.connection.jetstream()

    async def status(self, state: JobState, meta: RequestMeta) -> None:
        """Publish a status change the client can see (running, queued again)."""
        await self._send(subjects.job_event(state.id, "status"), state, meta)

    async def delta(self, delta: ChatDelta, meta: RequestMeta) -> None:
        """Publish a piece of the reply."""
        await self._send(subjects.job_event(delta.job_id, "delta"), delta, meta)

    async def tool_called(self, event: ToolCalled, meta: RequestMeta) -> None:
        """Publish a tool call of the model."""
        await self._send(subjects.job_event(event.job_id, "tool_call"), event, meta)

    async def tool_returned(self, event: ToolReturned, meta: RequestMeta) -> None:
        """Publish what a tool answered."""
        await self._send(subjects.job_event(event.job_id, "tool_result"), event, meta)

    async def final(self, state: JobState, meta: RequestMeta) -> None:
        """Store the job's final event (one per job, whatever the redeliveries)."""
        subject = subjects.job_event(state.id, state.status)
        headers = {**meta.headers(), "Nats-Msg-Id": f"{state.id}.final"}
        await self._call(
            self.js.publish(
                subject, state.model_dump_json().encode(), timeout=self.timeout,
                stream=subjects.JOB_EVENTS_STREAM.name, headers=headers,
            ),
            subject,
        )

    async def _send(self, subject: str, body: BaseModel, meta: RequestMeta) -> None:
        data = body.model_dump_json().encode()
        await self._call(self.connection.publish(subject, data, headers=meta.headers()), subject)

    @staticmethod
    async def _call(call: Awaitable[object], subject: str) -> None:
        try:
            await call
        except (nats.errors.Error, TimeoutError) as exc:
            raise EventError(f"{subject} not published: {exc!r}") from exc
