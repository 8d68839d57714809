"""What the agent's integration tests run against: real NATS, the simulated model, a history
stand-in, and the agent itself (in this process, or as ``python -m services.agent``).

Holds no tests of its own; the agent's integration tests import it.
"""

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import httpx
import nats
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.base import utcnow
from contracts.chat import CancelRequest, JobState, RequestChat
from contracts.history import (
    AppendMessage,
    EndJob,
    JobEnded,
    ListMessages,
    MessagePage,
    MessageRecord,
    MessageReply,
    Role,
)
from services.agent.app import STREAMS, create_app
from services.agent.config import Settings
from services.launcher.natsserver import free_port
from services.runtime.bus import cancels_bucket, ensure_streams, jobs_bucket
from services.runtime.meta import RequestMeta
from services.simllm import model
from services.simllm.config import Settings as SimSettings
from services.simllm.server import running
from tests.streams import eventually as polled
from tests.streams import stream_messages

DEADLINE = 20.0
T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = DEADLINE
) -> T:
    """Poll ``probe`` until ``done`` holds, failing after ``timeout`` seconds."""
    value = await polled(probe, done, timeout)
    assert done(value), f"gave up waiting; last value: {value!r}"
    return value


@dataclass
class HistoryStandIn:
    """Answers history's message subjects from a dict, like the real service would."""

    messages: dict[UUID, list[MessageRecord]] = field(default_factory=dict)
    ended: list[UUID] = field(default_factory=list)  # jobs history was told ended without a reply

    def add(
        self, session_id: UUID, user_id: str, role: Role, content: str, job_id: UUID
    ) -> MessageRecord:
        record = MessageRecord(
            id=uuid.uuid4(), session_id=session_id, user_id=user_id, role=role,
            content=content, created_at=utcnow(), job_id=job_id,
        )
        self.messages.setdefault(session_id, []).append(record)
        return record

    def replies(self, job_id: UUID) -> list[MessageRecord]:
        return [
            m for ms in self.messages.values() for m in ms
            if m.job_id == job_id and m.role == "assistant"
        ]

    def router(self, broker: NatsBroker) -> None:
        @broker.subscriber(subjects.HISTORY_MESSAGE_LIST, queue=subjects.HISTORY_QUEUE)
        async def list_messages(query: ListMessages) -> MessagePage:
            newest_first = list(reversed(self.messages.get(query.session_id, [])))
            return MessagePage(items=tuple(newest_first[: query.limit]))

        @broker.subscriber(subjects.HISTORY_MESSAGE_APPEND, queue=subjects.HISTORY_QUEUE)
        async def append(command: AppendMessage) -> MessageReply:
            for record in self.messages.get(command.session_id, []):
                if record.job_id == command.job_id and record.role == command.role:
                    return MessageReply(message=record, created=False)
            record = self.add(
                command.session_id, command.user_id, command.role, command.content, command.job_id
            )
            return MessageReply(message=record, created=True)

        @broker.subscriber(subjects.HISTORY_JOB_END, queue=subjects.HISTORY_QUEUE)
        async def end_job(command: EndJob) -> JobEnded:
            self.ended.append(command.job_id)
            return JobEnded(known=True)


@dataclass
class Stack:
    nc: Client
    js: JetStreamContext
    kv: KeyValue
    cancels: KeyValue
    history: HistoryStandIn
    sim_url: str
    settings: Settings

    async def submit(
        self,
        content: str,
        session_id: UUID | None = None,
        job_id: UUID | None = None,
        follows: UUID | None = None,
        user: str = "u1",
    ) -> RequestChat:
        """Do what the gateway and history do: the job record, the user message, the job."""
        job_id, session_id = job_id or uuid.uuid4(), session_id or uuid.uuid4()
        created_at = utcnow()
        state = JobState(
            id=job_id, user_id=user, session_id=session_id, status="queued",
            created_at=created_at,
        )
        revision = await self.kv.create(str(job_id), state.model_dump_json().encode())
        message = self.history.add(session_id, user, "user", content, job_id)
        request = RequestChat(
            job_id=job_id, user_id=user, session_id=session_id, persona="friend",
            message_id=message.id, content=content, created_at=created_at, follows=follows,
            revision=revision,
        )
        await self.publish(request.model_dump_json().encode(), msg_id=str(job_id), user=user)
        return request

    async def cancel(self, job_id: UUID) -> None:
        """Do what the gateway does for a cancel: a request in the cancel bucket."""
        body = CancelRequest(job_id=job_id, user_id="u1", requested_at=utcnow())
        await self.cancels.put(str(job_id), body.model_dump_json().encode())

    async def events(self, job_id: UUID) -> list[tuple[str, bytes]]:
        """Return the job's stored events as (kind, body), oldest first."""
        found = await stream_messages(
            self.js, subjects.JOB_EVENTS_STREAM.name, subjects.job_events(job_id)
        )
        return [(m.subject.rsplit(".", 1)[-1], m.data) for m in found]

    async def publish(self, body: bytes, msg_id: str | None = None, user: str = "u1") -> None:
        headers = RequestMeta(request_id="req-it", user_id=user).headers()
        if msg_id is not None:
            headers["Nats-Msg-Id"] = msg_id
        await self.js.publish(
            subjects.CHAT_REQUESTED, body, stream=subjects.CHAT_JOBS_STREAM.name, headers=headers
        )

    async def state(self, job_id: UUID) -> JobState:
        entry = await self.kv.get(str(job_id))
        assert entry.value is not None
        return JobState.model_validate_json(entry.value)

    async def final_state(self, job_id: UUID, timeout: float = DEADLINE) -> JobState:
        return await eventually(lambda: self.state(job_id), lambda s: s.finished, timeout)

    async def stream_bodies(self, stream: str, subject: str) -> list[bytes]:
        """Return the bodies stored in a stream under one subject, oldest first."""
        return [m.data for m in await stream_messages(self.js, stream, subject) if m.data]

    async def sim_seen(self) -> dict[str, Any]:
        """Return what the simulated model received, and the streams closed early."""
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{self.sim_url.removesuffix('/v1')}/sim/requests")
        seen: dict[str, Any] = answer.json()
        return seen

    async def llm_prompts(self, content: str) -> list[list[dict[str, Any]]]:
        """Return the prompts of the model calls whose last user message is ``content``."""
        items = (await self.sim_seen())["items"]
        return [
            body["messages"] for body in items
            if model.last_user_text(body["messages"]) == content
        ]

    async def llm_requests(self, content: str) -> int:
        return len(await self.llm_prompts(content))

    async def consumer_idle(self) -> bool:
        info = await self.js.consumer_info(subjects.CHAT_JOBS_STREAM.name, subjects.AGENT_DURABLE)
        stream = await self.js.stream_info(subjects.CHAT_JOBS_STREAM.name)
        return bool(
            info.num_pending == 0
            and info.num_ack_pending == 0
            and info.delivered.stream_seq == stream.state.last_seq
        )


StartAgent = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def start_agent(clean_nats: str) -> AsyncIterator[StartAgent]:
    """Start the model, history and (unless ``in_process=False``) an agent; return the stack.

    ``sim_refuse`` makes the simulated model refuse those request options.
    """
    async with AsyncExitStack() as stack:

        async def start(
            *, in_process: bool = True, sim_refuse: frozenset[str] = frozenset(),
            **overrides: Any,
        ) -> Stack:
            sim = SimSettings(
                simllm_port=free_port(), llm_sim_latency=0.01, llm_sim_tokens_per_second=0,
                llm_sim_refuse=sim_refuse,
            )
            sim_url = await stack.enter_async_context(running(sim))
            history = HistoryStandIn()
            history_broker = NatsBroker(clean_nats)
            history.router(history_broker)
            await history_broker.start()
            # The server must know the subscriptions before anyone sends a request.
            await history_broker.connection.flush()
            stack.push_async_callback(history_broker.stop)
            await ensure_streams(history_broker, STREAMS)
            kv = await jobs_bucket(history_broker)
            cancels = await cancels_bucket(history_broker)
            values: dict[str, Any] = {
                "nats_url": clean_nats, "openai_base_url": sim_url, "llm_max_retries": 0,
                "llm_timeout": 10, "agent_concurrency": 8, "agent_ack_wait": 5,
                "agent_retry_delay": 0.1, "instance": "it-agent",
            }
            settings = Settings(**(values | overrides))
            if in_process:
                app = create_app(settings)
                await app.start()
                stack.push_async_callback(app.stop)
            nc = await nats.connect(clean_nats)
            stack.push_async_callback(nc.close)
            return Stack(nc, nc.jetstream(), kv, cancels, history, sim_url, settings)

        yield start
