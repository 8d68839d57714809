"""The asynchronous client: ``AsyncClient(url, token)``, the same API as :class:`Client`."""

import asyncio
from collections.abc import AsyncGenerator, Mapping
from types import TracebackType
from typing import TypeVar

import httpx

from chatbus_client import calls
from chatbus_client.calls import Call, Id
from chatbus_client.client import DEFAULT_URL
from chatbus_client.errors import error_from
from chatbus_client.events import JobEvent
from chatbus_client.models import Job, Memory, Message, Page, Session
from chatbus_client.retry import RetryPolicy, unreachable
from chatbus_client.sse import Resumption
from chatbus_client.stream import follow_async

T = TypeVar("T")


class AsyncClient:
    """Talk to a chatbus gateway; use it in ``async with`` or await :meth:`close`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        sent = {"User-Agent": "chatbus-client", **(headers or {})}
        if token:
            sent["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=sent, timeout=timeout, transport=transport
        )
        self.sessions = AsyncSessions(self)
        self.messages = AsyncMessages(self)
        self.jobs = AsyncJobs(self)
        self.memories = AsyncMemories(self)

    async def history(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Message]:
        """List the user's messages across all sessions, newest first (the dashboard feed)."""
        return await self.run(calls.history(limit, cursor))

    async def run(self, call: Call[T]) -> T:
        """Send a call, waiting out 429 and 503 as the retry policy allows; return its answer."""
        retries = 0
        while True:
            try:
                response = await self.http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.body,
                    headers=call.headers,
                    timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                raise unreachable(self.base_url, exc) from exc
            if response.is_success:
                return call.parse(response)
            error = error_from(response)
            delay = self.retry.delay(error, retries)
            if delay is None:
                raise error
            retries += 1
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class AsyncSessions:
    """``client.sessions``: create, list, get, archive, delete."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, persona: str = "default", title: str | None = None) -> Session:
        """Create a session; the persona's previous active session is archived."""
        return await self._client.run(calls.create_session(persona, title))

    async def list(
        self,
        *,
        status: str | None = None,
        persona: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Session]:
        """List sessions, newest first."""
        return await self._client.run(calls.list_sessions(status, persona, limit, cursor))

    async def get(self, session_id: Id) -> Session:
        """Read one session."""
        return await self._client.run(calls.get_session(session_id))

    async def archive(self, session_id: Id) -> Session:
        """Archive a session; its memories are drawn in the background."""
        return await self._client.run(calls.archive_session(session_id))

    async def delete(self, session_id: Id) -> None:
        """Delete a session with its messages and memories."""
        await self._client.run(calls.delete_session(session_id))


class AsyncMessages:
    """``client.messages``: send, list."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def send(
        self,
        session_id: Id,
        content: str,
        *,
        wait: float | None = None,
        idempotency_key: str | None = None,
        multitask: str | None = None,
    ) -> Job:
        """Queue a reply to ``content``; with ``wait``, hold until it ends or the wait runs out."""
        call = calls.send_message(session_id, content, wait, idempotency_key, multitask)
        return await self._client.run(call)

    async def list(
        self, session_id: Id, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Message]:
        """List a session's messages, newest first."""
        return await self._client.run(calls.list_messages(session_id, limit, cursor))


class AsyncJobs:
    """``client.jobs``: get, cancel, stream."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, job_id: Id) -> Job:
        """Read a job."""
        return await self._client.run(calls.get_job(job_id))

    async def cancel(self, job_id: Id) -> Job:
        """Cancel a queued or running job; Conflict if it had ended."""
        return await self._client.run(calls.cancel_job(job_id))

    async def stream(
        self, job_id: Id, *, last_event_id: str | None = None, max_reconnects: int = 5
    ) -> AsyncGenerator[JobEvent, None]:
        """Yield the job's events to the final one, reconnecting after the last event seen."""
        resume = Resumption(last_event_id, max_reconnects)
        async for event in follow_async(self._client.http, job_id, resume):
            yield event


class AsyncMemories:
    """``client.memories``: list, delete."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(
        self,
        *,
        persona: str | None = None,
        q: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Memory]:
        """List memories, newest first, by persona and text."""
        return await self._client.run(calls.list_memories(persona, q, limit, cursor))

    async def delete(self, memory_id: Id) -> None:
        """Delete a memory."""
        await self._client.run(calls.delete_memory(memory_id))
