"""A Python client of the chatbus REST API, sync (:class:`Client`) and async (:class:`AsyncClient`).

::

    from chatbus_client import Client

    with Client("http://127.0.0.1:8000", token) as client:
        session = client.sessions.create(persona="default")
        job = client.messages.send(session.id, "Hello there")
        for event in client.jobs.stream(job.id):  # reconnects by itself
            ...

Errors are :class:`ChatbusError` subclasses carrying the problem+json fields
(see :mod:`chatbus_client.errors`); 429 and 503 are retried as ``Retry-After``
says, a few times (:class:`RetryPolicy`).
"""

from chatbus_client.aio import AsyncClient
from chatbus_client.client import DEFAULT_URL, Client
from chatbus_client.errors import (
    ChatbusError,
    Conflict,
    ConnectionFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from chatbus_client.events import (
    CancelledEvent,
    CompletedEvent,
    DeltaEvent,
    FailedEvent,
    FinalEvent,
    JobEvent,
    ReplyText,
    StatusEvent,
    ToolCallEvent,
    ToolResultEvent,
    UnknownEvent,
)
from chatbus_client.models import Job, JobError, Memory, Message, Page, Session
from chatbus_client.retry import RetryPolicy

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "CancelledEvent",
    "ChatbusError",
    "Client",
    "CompletedEvent",
    "Conflict",
    "ConnectionFailed",
    "DeltaEvent",
    "FailedEvent",
    "FinalEvent",
    "Job",
    "JobError",
    "JobEvent",
    "Memory",
    "Message",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "RateLimited",
    "ReplyText",
    "RetryPolicy",
    "ServerError",
    "Session",
    "StatusEvent",
    "ToolCallEvent",
    "ToolResultEvent",
    "Unauthorized",
    "Unavailable",
    "UnknownEvent",
    "ValidationFailed",
]
