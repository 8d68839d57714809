"""The agent over real NATS, the simulated model over HTTP, and a stand-in for history."""

import asyncio
import json
import time
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
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.base import Ping, Pong, utcnow
from contracts.chat import ChatCompleted, ChatDelta, ChatFailed, JobState, RequestChat
from contracts.deadletter import DeadLetter
from contracts.history import (
    AppendMessage,
    ListMessages,
    MessagePage,
    MessageRecord,
    MessageReply,
    Role,
)
from services.agent.app import create_app
from services.agent.config import Settings
from services.launcher.natsserver import free_port
from services.runtime.bus import RequestMeta
from services.simllm import model
from services.simllm.config import Settings as SimSettings
from services.simllm.server import running

pytestmark = pytest.mark.integration
DEADLINE = 20.0


@dataclass
class HistoryStandIn:
    """Answers history's message subjects from a dict, like the real service would."""

    messages: dict[UUID, list[MessageRecord]] = field(default_factory=dict)

    def add(
        self, session_id: UUID, user_id: str, role: Role, content: str, job_id: UUID
    ) -> MessageRecord:
        record = MessageRecord(
            id=uuid.uuid4(), session_id=session_id, user_id=user_id, role=role,
            content=content, created_at=utcnow(), job_id=job_id,
        )
        self.messages.setdefault(session_id, []).append(record)
        return record

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


@dataclass
class Stack:
    nc: Client
    js: JetStreamContext
    kv: KeyValue
    history: HistoryStandIn
    sim_url: str

    async def submit(
        self, content: str, session_id: UUID | None = None, job_id: UUID | None = None
    ) -> RequestChat:
        """Do what the gateway does: store the user message, a queued job, then publish."""
        job_id, session_id = job_id or uuid.uuid4(), session_id or uuid.uuid4()
        user = self.history.add(session_id, "u1", "user", content, job_id)
        request = RequestChat(
            job_id=job_id, user_id="u1", session_id=session_id, persona="friend",
            message_id=user.id, content=content, created_at=utcnow(),
        )
        state = JobState(
            id=job_id, user_id="u1", session_id=session_id, status="queued",
            created_at=request.created_at,
        )
        await self.kv.create(str(job_id), state.model_dump_json().encode())
        await self.publish(request.model_dump_json().encode(), msg_id=str(job_id))
        return request

    async def publish(self, body: bytes, msg_id: str | None = None) -> None:
        headers = RequestMeta(request_id="req-it", user_id="u1").headers()
        if msg_id is not None:
            headers["Nats-Msg-Id"] = msg_id
        await self.js.publish(
            subjects.CHAT_REQUESTED, body, stream=subjects.CHAT_JOBS_STREAM.name, headers=headers
        )

    async def state(self, job_id: UUID) -> JobState:
        entry = await self.kv.get(str(job_id))
        assert entry.value is not None
        return JobState.model_validate_json(entry.value)

    async def final_state(self, job_id: UUID) -> JobState:
        return await eventually(lambda: self.state(job_id), lambda s: s.finished)

    async def stream_bodies(self, stream: str, subject: str) -> list[bytes]:
        """Return the bodies stored in a stream under one subject, oldest first."""
        try:
            info = await self.js.stream_info(stream)
        except NotFoundError:
            return []
        bodies = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await self.js.get_msg(stream, seq)
            if msg.subject == subject and msg.data is not None:
                bodies.append(msg.data)
        return bodies

    async def llm_requests(self, content: str) -> int:
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"{self.sim_url.removesuffix('/v1')}/sim/requests")
        items: list[dict[str, Any]] = answer.json()["items"]
        return sum(1 for body in items if model.last_user_text(body["messages"]) == content)

    async def consumer_idle(self) -> bool:
        info = await self.js.consumer_info(subjects.CHAT_JOBS_STREAM.name, subjects.AGENT_DURABLE)
        stream = await self.js.stream_info(subjects.CHAT_JOBS_STREAM.name)
        return bool(
            info.num_pending == 0
            and info.num_ack_pending == 0
            and info.delivered.stream_seq == stream.state.last_seq
        )


T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = DEADLINE
) -> T:
    """Poll ``probe`` until ``done`` holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"gave up waiting; last value: {value!r}"
        await asyncio.sleep(0.05)


StartAgent = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def start_agent(clean_nats: str) -> AsyncIterator[StartAgent]:
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Stack:
            sim = SimSettings(
                simllm_port=free_port(), llm_sim_latency=0.01, llm_sim_tokens_per_second=0
            )
            sim_url = await stack.enter_async_context(running(sim))
            history = HistoryStandIn()
            history_broker = NatsBroker(clean_nats)
            history.router(history_broker)
            await history_broker.start()
            stack.push_async_callback(history_broker.stop)
            settings = Settings(
                nats_url=clean_nats, openai_base_url=sim_url, llm_max_retries=0,
                llm_timeout=10, agent_concurrency=8, agent_ack_wait=5,
                agent_retry_delay=0.1, instance="it-agent", **overrides,
            )
            app = create_app(settings)
            await app.start()
            stack.push_async_callback(app.stop)
            nc = await nats.connect(clean_nats)
            stack.push_async_callback(nc.close)
            js = nc.jetstream()
            kv = await js.key_value(subjects.JOBS_BUCKET)
            return Stack(nc, js, kv, history, sim_url)

        yield start


async def test_job_completes_with_deltas_event_and_context(start_agent: StartAgent) -> None:
    stack = await start_agent()
    first = await stack.submit("hello")
    assert (await stack.final_state(first.job_id)).status == "completed"

    deltas: list[ChatDelta] = []

    async def on_delta(msg: Msg) -> None:
        deltas.append(ChatDelta.model_validate_json(msg.data))

    async def streamed() -> str:
        return "".join(d.text for d in sorted(deltas, key=lambda d: d.seq))

    job_id = uuid.uuid4()
    # Subscribe before the job is queued, as a client streaming the job would.
    sub = await stack.nc.subscribe(subjects.chat_delta(str(job_id)), cb=on_delta)
    await stack.nc.flush()
    second = await stack.submit("again please", session_id=first.session_id, job_id=job_id)
    state = await stack.final_state(second.job_id)

    expected = "Echo: again please (turn 2)"  # the first exchange reached the model
    assert state.status == "completed" and state.attempts == 1
    assert state.reply is not None and state.reply.content == expected
    assert state.reply.role == "assistant" and state.reply.job_id == second.job_id
    await eventually(streamed, lambda text: text == expected)
    await sub.unsubscribe()
    assert {d.job_id for d in deltas} == {job_id}
    assert [d.seq for d in sorted(deltas, key=lambda d: d.seq)] == list(range(len(deltas)))
    completed = [
        ChatCompleted.model_validate_json(body)
        for body in await stack.stream_bodies("CHAT_EVENTS", subjects.CHAT_COMPLETED)
    ]
    assert [(c.job_id, c.reply.content) for c in completed] == [
        (first.job_id, "Echo: hello (turn 1)"),
        (second.job_id, expected),
    ]
    pong = Pong.model_validate_json(
        (await stack.nc.request(subjects.AGENT_PING, Ping().model_dump_json().encode(), 5)).data
    )
    assert pong.service == "agent"


async def test_model_errors_fail_the_job_after_max_attempts(start_agent: StartAgent) -> None:
    stack = await start_agent(agent_max_attempts=2)
    request = await stack.submit("explode [sim:error]")

    state = await stack.final_state(request.job_id)

    assert state.status == "failed" and state.attempts == 2
    assert state.error is not None and state.error.code == "max_attempts"
    assert await stack.llm_requests("explode [sim:error]") == 2
    [failed] = await stack.stream_bodies("CHAT_EVENTS", subjects.CHAT_FAILED)
    assert ChatFailed.model_validate_json(failed).attempts == 2
    letters = await eventually(
        lambda: stack.stream_bodies("DEADLETTER", subjects.deadletter("agent")), bool
    )
    letter = DeadLetter.model_validate_json(letters[0])
    assert RequestChat.model_validate_json(letter.payload).job_id == request.job_id


async def test_malformed_message_is_dead_lettered_and_work_goes_on(start_agent: StartAgent) -> None:
    stack = await start_agent()
    await stack.publish(b'{"this is": "not a chat request"}')
    request = await stack.submit("still here")

    state = await stack.final_state(request.job_id)

    assert state.status == "completed"
    [body] = await eventually(
        lambda: stack.stream_bodies("DEADLETTER", subjects.deadletter("agent")), bool
    )
    letter = DeadLetter.model_validate_json(body)
    assert letter.subject == subjects.CHAT_REQUESTED
    assert letter.reason.startswith("not a valid RequestChat")
    assert json.loads(letter.payload) == {"this is": "not a chat request"}
    assert letter.headers[subjects.HEADER_REQUEST_ID] == "req-it"


async def test_completed_job_published_again_is_not_run_again(start_agent: StartAgent) -> None:
    stack = await start_agent()
    request = await stack.submit("only once")
    assert (await stack.final_state(request.job_id)).status == "completed"

    # A new message id, so JetStream's dedup window does not hide the repeat from the agent.
    await stack.publish(request.model_dump_json().encode(), msg_id=f"{request.job_id}.again")
    await eventually(stack.consumer_idle, bool)

    assert await stack.llm_requests("only once") == 1
    consumer = await stack.js.consumer_info(
        subjects.CHAT_JOBS_STREAM.name, subjects.AGENT_DURABLE
    )
    assert consumer.config.ack_wait == 5 and consumer.config.max_deliver == 3 + 3
    assert (await stack.state(request.job_id)).status == "completed"
    assert len(await stack.stream_bodies("CHAT_EVENTS", subjects.CHAT_COMPLETED)) == 1
