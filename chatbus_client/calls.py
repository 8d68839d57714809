"""Every API call as data: method, path, query, body, headers and how to read the answer.

The sync and the async client run the same :class:`Call` objects, so both speak
the API in exactly one way.
"""

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

import httpx
from pydantic import BaseModel

from chatbus_client.models import Job, Memory, Message, Page, Session

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Id = UUID | str
Params = Mapping[str, str | int | float]
WAIT_SLACK = 30.0  # beyond ?wait=, the time the server may take to answer


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the reading of its 2xx answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Params | None = None
    body: Any = None
    headers: Mapping[str, str] | None = None
    timeout: float | None = None


def _model(cls: type[M]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        return cls.model_validate_json(response.content)

    return parse


def _nothing(response: httpx.Response) -> None:
    return None


def _params(**values: str | int | float | Id | None) -> dict[str, str | int | float]:
    return {k: str(v) if isinstance(v, UUID) else v for k, v in values.items() if v is not None}


def create_session(persona: str, title: str | None) -> Call[Session]:
    """Create a session (the persona's previous active session is archived)."""
    return Call("POST", "/api/sessions", _model(Session), body={"persona": persona, "title": title})


def list_sessions(
    status: str | None, persona: str | None, limit: int | None, cursor: str | None
) -> Call[Page[Session]]:
    """List sessions, newest first."""
    params = _params(status=status, persona=persona, limit=limit, cursor=cursor)
    return Call("GET", "/api/sessions", _model(Page[Session]), params=params)


def get_session(session_id: Id) -> Call[Session]:
    """Read one session."""
    return Call("GET", f"/api/sessions/{session_id}", _model(Session))


def archive_session(session_id: Id) -> Call[Session]:
    """Archive a session (memory generation starts)."""
    return Call("POST", f"/api/sessions/{session_id}/archive", _model(Session))


def delete_session(session_id: Id) -> Call[None]:
    """Delete a session with its messages and memories."""
    return Call("DELETE", f"/api/sessions/{session_id}", _nothing)


def send_message(
    session_id: Id,
    content: str,
    wait: float | None,
    idempotency_key: str | None,
    multitask: str | None,
) -> Call[Job]:
    """Post a message; a key is made up when none is given, so a retry never doubles it."""
    headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    return Call(
        "POST",
        f"/api/sessions/{session_id}/messages",
        _model(Job),
        params=_params(wait=wait, multitask=multitask),
        body={"content": content},
        headers=headers,
        timeout=None if not wait else wait + WAIT_SLACK,
    )


def list_messages(session_id: Id, limit: int | None, cursor: str | None) -> Call[Page[Message]]:
    """List a session's messages, newest first."""
    path = f"/api/sessions/{session_id}/messages"
    return Call("GET", path, _model(Page[Message]), params=_params(limit=limit, cursor=cursor))


def get_job(job_id: Id) -> Call[Job]:
    """Read a job."""
    return Call("GET", f"/api/jobs/{job_id}", _model(Job))


def cancel_job(job_id: Id) -> Call[Job]:
    """Cancel a queued or running job."""
    return Call("POST", f"/api/jobs/{job_id}/cancel", _model(Job))


def events_path(job_id: Id) -> str:
    """Return the path of a job's event stream."""
    return f"/api/jobs/{job_id}/events"


def list_memories(
    persona: str | None, q: str | None, limit: int | None, cursor: str | None
) -> Call[Page[Memory]]:
    """List memories, newest first, by persona and text."""
    params = _params(persona=persona, q=q, limit=limit, cursor=cursor)
    return Call("GET", "/api/memories", _model(Page[Memory]), params=params)


def delete_memory(memory_id: Id) -> Call[None]:
    """Delete a memory."""
    return Call("DELETE", f"/api/memories/{memory_id}", _nothing)


def history(limit: int | None, cursor: str | None) -> Call[Page[Message]]:
    """List the user's messages across sessions, newest first."""
    params = _params(limit=limit, cursor=cursor)
    return Call("GET", "/api/history", _model(Page[Message]), params=params)
