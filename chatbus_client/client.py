"""The synchronous client: ``Client(url, token)``, one attribute per resource of the API."""

import time
from collections.abc import Generator, Mapping
from types import TracebackType
from typing import TypeVar

import httpx

from chatbus_client import calls
from chatbus_client.calls import Call, Id
from chatbus_client.errors import error_from
from chatbus_client.events import JobEvent
from chatbus_client.models import Job, Memory, Message, Page, Session
from chatbus_client.retry import RetryPolicy, unreachable
from chatbus_client.sse import Resumption
from chatbus_client.stream import follow

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"


class Client:
    """Talk to a chatbus gateway; use it in ``with`` or call :meth:`close`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        sent = {"User-Agent": "chatbus-client", **(headers or {})}
        if token:
            sent["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.http = httpx.Client(
            base_url=self.base_url, headers=sent, timeout=timeout, transport=transport
        )
        self.sessions = Sessions(self)
        self.messages = Messages(self)
        self.jobs = Jobs(self)
        self.memories = Memories(self)

    def history(self, *, limit: int | None = None, cursor: str | None = None) -> Page[Message]:
        """List the user's messages across all sessions, newest first (the dashboard feed)."""
        return self.run(calls.history(limit, cursor))

    def run(self, call: Call[T]) -> T:
        """Send a call, waiting out 429 and 503 as the retry policy allows; return its answer."""
        retries = 0
        while True:
            try:
                response = self.http.request(
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
            time.sleep(delay)

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Sessions:
    """``client.sessions``: create, list, get, archive, delete."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, persona: str = "default", title: str | None = None) -> Session:
        """Create a session; the persona's previous active session is archived."""
        return self._client.run(calls.create_session(persona, title))

    def list(
        self,
        *,
        status: str | None = None,
        persona: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Session]:
        """List sessions, newest first."""
        return self._client.run(calls.list_sessions(status, persona, limit, cursor))

    def get(self, session_id: Id) -> Session:
        """Read one session."""
        return self._client.run(calls.get_session(session_id))

    def archive(self, session_id: Id) -> Session:
        """Archive a session; its memories are drawn in the background."""
        return self._client.run(calls.archive_session(session_id))

    def delete(self, session_id: Id) -> None:
        """Delete a session with its messages and memories."""
        self._client.run(calls.delete_session(session_id))


class Messages:
    """``client.messages``: send, list."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def send(
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
        return self._client.run(call)

    def list(
        self, session_id: Id, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Message]:
        """List a session's messages, newest first."""
        return self._client.run(calls.list_messages(session_id, limit, cursor))


class Jobs:
    """``client.jobs``: get, cancel, stream."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, job_id: Id) -> Job:
        """Read a job."""
        return self._client.run(calls.get_job(job_id))

    def cancel(self, job_id: Id) -> Job:
        """Cancel a queued or running job; Conflict if it had ended."""
        return self._client.run(calls.cancel_job(job_id))

    def stream(
        self, job_id: Id, *, last_event_id: str | None = None, max_reconnects: int = 5
    ) -> Generator[JobEvent, None, None]:
        """Yield the job's events to the final one, reconnecting after the last event seen."""
        return follow(self._client.http, job_id, Resumption(last_event_id, max_reconnects))


class Memories:
    """``client.memories``: list, delete."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(
        self,
        *,
        persona: str | None = None,
        q: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Memory]:
        """List memories, newest first, by persona and text."""
        return self._client.run(calls.list_memories(persona, q, limit, cursor))

    def delete(self, memory_id: Id) -> None:
        """Delete a memory."""
        self._client.run(calls.delete_memory(memory_id))
