"""The Python client against the stack ``chatbus up`` runs: the README's walk-through, streams
that resume after a dropped connection, and a typed error for every documented failure."""

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chatbus_client import (
    AsyncClient,
    Client,
    CompletedEvent,
    Conflict,
    DeltaEvent,
    Job,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ReplyText,
    RetryPolicy,
    StatusEvent,
    Unauthorized,
    ValidationFailed,
)
from tests.e2e.launcher import RunningStack, chatbus_up

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MAX_ACTIVE_JOBS = 3
LONG = " ".join(f"word{n}" for n in range(40))  # 40 tokens at 20 a second: 2 s of deltas


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    state = tmp_path_factory.mktemp("client") / "state"
    with chatbus_up(
        state,
        LLM_SIM_TOKENS_PER_SECOND="20",
        MAX_ACTIVE_JOBS_PER_USER=str(MAX_ACTIVE_JOBS),
        RETRY_AFTER_SECONDS="1",
    ) as running:
        yield running


def client_of(stack: RunningStack, user: str, **kwargs: object) -> Client:
    return Client(stack.base_url, stack.token(user), **kwargs)  # type: ignore[arg-type]


def test_readme_walkthrough(stack: RunningStack) -> None:
    with client_of(stack, "walker") as client:
        session = client.sessions.create(persona="default")
        assert session.status == "active"
        job = client.messages.send(session.id, "Hello there", wait=30)
        assert job.status == "completed", job
        assert job.reply is not None and job.reply.content == "Echo: Hello there (turn 1)"
        assert client.jobs.get(job.id).reply == job.reply

        messages = client.messages.list(session.id).items
        assert [m.role for m in messages] == ["assistant", "user"]
        assert messages[1].content == "Hello there"
        feed = client.history(limit=10)
        assert [m.id for m in feed.items] == [m.id for m in messages]
        assert client.sessions.get(session.id).message_count == 2

        again = client.messages.send(session.id, "Hi", idempotency_key="k-1", wait=30)
        assert client.messages.send(session.id, "Hi", idempotency_key="k-1").id == again.id

        page = client.sessions.list(limit=1)
        assert page.items[0].id == session.id


def test_memories_are_listed_and_deleted(stack: RunningStack) -> None:
    with client_of(stack, "rememberer") as client:
        session = client.sessions.create(persona="tea")
        client.messages.send(session.id, "I like green tea", wait=30)
        assert client.sessions.archive(session.id).status == "archived"
        deadline = time.monotonic() + 30
        while not (memories := client.memories.list(persona="tea").items):
            assert time.monotonic() < deadline, "no memory within 30 s of archiving"
            time.sleep(0.3)
        assert memories[0].content == "The user said: I like green tea"
        assert client.memories.list(persona="tea", q="GREEN").items == memories
        client.memories.delete(memories[0].id)
        assert client.memories.list(persona="tea").items == []
        client.sessions.delete(session.id)
        with pytest.raises(NotFound):
            client.sessions.get(session.id)


def test_a_stream_carries_the_whole_reply(stack: RunningStack) -> None:
    with client_of(stack, "streamer") as client:
        session = client.sessions.create()
        job = client.messages.send(session.id, LONG)
        reply = ReplyText()
        events = list(client.jobs.stream(job.id))
        deltas = "".join(e.text for e in events if isinstance(e, DeltaEvent))
        for event in events:
            reply.apply(event)
        assert isinstance(events[0], StatusEvent)
        assert isinstance(events[-1], CompletedEvent)
        assert deltas == reply.text == f"Echo: {LONG} (turn 1)"
        assert all(e.id for e in events)


def test_a_stream_resumed_with_last_event_id_is_complete_and_not_doubled(
    stack: RunningStack,
) -> None:
    with client_of(stack, "resumer") as client:
        session = client.sessions.create()
        job = client.messages.send(session.id, LONG)
        first: list[str] = []
        last_id = None
        stream = client.jobs.stream(job.id)
        for event in stream:
            last_id = event.id
            if isinstance(event, DeltaEvent):
                first.append(event.text)
                if len(first) == 5:
                    break
        stream.close()  # the HTTP stream is closed mid-reply
        time.sleep(0.8)  # deltas keep coming while no one listens
        rest = list(client.jobs.stream(job.id, last_event_id=last_id))
        text = "".join(first) + "".join(e.text for e in rest if isinstance(e, DeltaEvent))
        assert isinstance(rest[-1], CompletedEvent)
        assert rest[-1].job.reply is not None
        assert text == rest[-1].job.reply.content == f"Echo: {LONG} (turn 1)"


class DropFirstStream(httpx.BaseTransport):
    """Cut the first event stream after a few chunks, as a network would; keep the rest."""

    def __init__(self, after_chunks: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.after_chunks = after_chunks
        self.streams: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.streams.append(request)
        if len(self.streams) > 1:
            return response
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=CutStream(response.stream, self.after_chunks),  # type: ignore[arg-type]
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


class CutStream(httpx.SyncByteStream):
    """A body that fails with a read error after ``after`` chunks."""

    def __init__(self, inner: httpx.SyncByteStream, after: int) -> None:
        self.inner = inner
        self.after = after

    def __iter__(self) -> Iterator[bytes]:
        for n, chunk in enumerate(self.inner):
            if n >= self.after:
                raise httpx.ReadError("connection dropped by the test")
            yield chunk

    def close(self) -> None:
        self.inner.close()


def test_a_dropped_stream_reconnects_by_itself(stack: RunningStack) -> None:
    transport = DropFirstStream(after_chunks=4)
    with client_of(stack, "dropped", transport=transport) as client:
        session = client.sessions.create()
        job = client.messages.send(session.id, LONG)
        events = list(client.jobs.stream(job.id))
        assert len(transport.streams) == 2, "the stream was not reopened after the drop"
        resumed_from = transport.streams[1].headers.get("Last-Event-ID")
        assert resumed_from is not None and resumed_from in {e.id for e in events}
        deltas = "".join(e.text for e in events if isinstance(e, DeltaEvent))
        assert isinstance(events[-1], CompletedEvent)
        assert deltas == f"Echo: {LONG} (turn 1)"


def test_typed_errors(stack: RunningStack) -> None:
    with client_of(stack, "erring") as client:
        with pytest.raises(NotFound) as missing:
            client.sessions.get("00000000-0000-4000-8000-000000000000")
        assert missing.value.status == 404 and missing.value.request_id
        assert missing.value.title == "Not Found" and missing.value.detail

        session = client.sessions.create()
        job = client.messages.send(session.id, "hi", wait=30)
        with pytest.raises(Conflict) as ended:
            client.jobs.cancel(job.id)
        assert ended.value.status == 409

        with pytest.raises(PayloadTooLarge) as large:
            client.messages.send(session.id, "x" * 40_000)
        assert large.value.status == 413

        with pytest.raises(ValidationFailed) as invalid:
            client.sessions.list(limit=0)
        assert invalid.value.errors and invalid.value.errors[0]["loc"] == ["query", "limit"]

    with Client(stack.base_url, "not-a-token") as stranger, pytest.raises(Unauthorized):
        stranger.sessions.list()


def test_429_is_typed_and_retried_as_retry_after_says(stack: RunningStack) -> None:
    with client_of(stack, "crowded") as client:
        slow: list[Job] = []
        for _ in range(MAX_ACTIVE_JOBS):
            session = client.sessions.create(persona=f"p{len(slow)}")
            slow.append(client.messages.send(session.id, "[sim:slow=60] hold a slot"))
        session = client.sessions.create(persona="last")
        with client_of(stack, "crowded", retry=RetryPolicy(max_retries=0)) as impatient:
            with pytest.raises(RateLimited) as limited:
                impatient.messages.send(session.id, "one too many")
        assert limited.value.status == 429 and limited.value.retry_after == 1.0
        assert limited.value.request_id

        # A slot frees while a patient client waits out Retry-After: it gets in.
        threading.Timer(1.5, client.jobs.cancel, args=(slow[0].id,)).start()
        started = time.monotonic()
        with client_of(stack, "crowded", retry=RetryPolicy(max_retries=20)) as patient:
            job = patient.messages.send(session.id, "patience", wait=30)
        assert job.status == "completed"
        assert time.monotonic() - started >= 1.0
        for other in slow[1:]:
            client.jobs.cancel(other.id)


async def test_async_client_sends_and_streams(stack: RunningStack) -> None:
    async with AsyncClient(stack.base_url, stack.token("async")) as client:
        session = await client.sessions.create(persona="default", title="async")
        job = await client.messages.send(session.id, "async hello")
        reply = ReplyText()
        async for event in client.jobs.stream(job.id):
            reply.apply(event)
        assert reply.text == "Echo: async hello (turn 1)"
        assert (await client.jobs.get(job.id)).status == "completed"
        page, feed = await asyncio.gather(
            client.messages.list(session.id), client.history(limit=2)
        )
        assert [m.id for m in page.items] == [m.id for m in feed.items]
        with pytest.raises(NotFound):
            await client.jobs.get("00000000-0000-4000-8000-000000000000")


def test_unreachable_server_is_a_typed_error(tmp_path: Path) -> None:
    from chatbus_client import ConnectionFailed
    from services.launcher.natsserver import free_port

    with Client(f"http://127.0.0.1:{free_port()}", "t") as client, pytest.raises(ConnectionFailed):
        client.sessions.list()
