"""Every channel of the bus: subject, message, reply, who sends, who receives, and how.

The AsyncAPI document of the bus is generated from this table (see
``services/runtime/asyncapi.py``); a test fails when a name of
:mod:`contracts.subjects` is missing from it, or when a service subscribes to a
subject the table does not list.
"""

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from contracts import subjects
from contracts.base import Ping, Pong, Reply
from contracts.chat import (
    CancelRequest,
    ChatDelta,
    JobState,
    RequestChat,
    ToolCalled,
    ToolReturned,
)
from contracts.deadletter import DeadLetter
from contracts.history import (
    AppendMessage,
    ArchiveSession,
    CreateSession,
    DeleteReply,
    DeleteSession,
    EndJob,
    GetSession,
    JobEnded,
    ListFeed,
    ListMessages,
    ListSessions,
    MessagePage,
    MessageReply,
    SearchMessages,
    SessionPage,
    SessionReply,
)
from contracts.memory import (
    DeleteMemory,
    MemoriesStored,
    MemoryDeleted,
    MemoryPage,
    RecallMemories,
)
from contracts.sessions import SessionArchived, SessionDeleted
from contracts.subjects import StreamSpec
from contracts.tools import ListTools, ToolList
from contracts.webhooks import (
    CreateEndpoint,
    DeleteEndpoint,
    DeliverWebhook,
    DeliveryPage,
    DeliveryReply,
    EndpointCreated,
    EndpointDeleted,
    EndpointPage,
    ListDeliveries,
    ListEndpoints,
    ResendDelivery,
)

Service = Literal["gateway", "agent", "history", "memory", "webhooks"]
KV_PREFIX = "$KV"  # a bucket's entries are messages on `$KV.<bucket>.<key>`


@dataclass(frozen=True)
class Channel:
    """One subject (``{name}`` marks a token that varies) and what travels on it."""

    subject: str
    message: type[BaseModel]
    summary: str
    senders: tuple[Service, ...]
    receivers: tuple[Service, ...] = ()
    reply: type[Reply] | None = None
    queue: str | None = None
    stream: StreamSpec | None = None
    durable: str | None = None
    bucket: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)


def request(
    subject: str,
    message: type[BaseModel],
    reply: type[Reply],
    summary: str,
    senders: tuple[Service, ...],
    receiver: Service,
    queue: str,
) -> Channel:
    """Describe a core-NATS request answered by one replica of a queue group."""
    return Channel(subject, message, summary, senders, (receiver,), reply=reply, queue=queue)


def entry(
    bucket: str,
    key: str,
    message: type[BaseModel],
    summary: str,
    about_key: str,
    users: tuple[Service, ...],
) -> Channel:
    """Describe the entries of a JetStream key-value bucket, read and written by ``users``."""
    subject = f"{KV_PREFIX}.{bucket}.{{{key}}}"
    parameters = {key: about_key}
    return Channel(subject, message, summary, users, users, bucket=bucket, parameters=parameters)


HISTORY, MEMORY, AGENT = subjects.HISTORY_QUEUE, subjects.MEMORY_QUEUE, subjects.AGENT_QUEUE
WEBHOOKS = subjects.WEBHOOKS_QUEUE
JOB_ID = {"job_id": "the job's id (the chat request's `job_id`)"}


def job_event(kind: str, message: type[BaseModel], summary: str) -> Channel:
    """Describe one kind of event of a job: stored in JOB_EVENTS, replayed by the gateways.

    The final ones are also consumed by the webhooks service, through one durable consumer.
    """
    final = kind in subjects.JOB_FINAL_KINDS
    return Channel(
        subjects.job_event("{job_id}", kind), message, summary, ("agent",),
        ("gateway", "webhooks") if final else ("gateway",),
        stream=subjects.JOB_EVENTS_STREAM, parameters=JOB_ID,
        durable=subjects.WEBHOOKS_JOBS_DURABLE if final else None,
    )


CHANNELS: tuple[Channel, ...] = (
    # Request-reply: answered by one replica of the service's queue group; a refused
    # request is answered with the reply's `error`, never left without an answer.
    request(subjects.HISTORY_SESSION_CREATE, CreateSession, SessionReply,
            "Create a session; the user's active session of the persona is archived.",
            ("gateway",), "history", HISTORY),
    request(subjects.HISTORY_SESSION_GET, GetSession, SessionReply,
            "Fetch one session of a user.", ("gateway",), "history", HISTORY),
    request(subjects.HISTORY_SESSION_LIST, ListSessions, SessionPage,
            "List a user's sessions, newest first.", ("gateway",), "history", HISTORY),
    request(subjects.HISTORY_SESSION_ARCHIVE, ArchiveSession, SessionReply,
            "Archive a session (announced on session.archived).", ("gateway",), "history", HISTORY),
    request(subjects.HISTORY_SESSION_DELETE, DeleteSession, DeleteReply,
            "Delete a session with its messages (announced on session.deleted).",
            ("gateway",), "history", HISTORY),
    request(subjects.HISTORY_MESSAGE_APPEND, AppendMessage, MessageReply,
            "Store a message of a job, idempotent on (job, role). A user message is admitted "
            "here: limits, the job it follows, multitask, and its chat.requested (outbox); an "
            "assistant message ends its job.",
            ("gateway", "agent"), "history", HISTORY),
    request(subjects.HISTORY_JOB_END, EndJob, JobEnded,
            "A job ended without a reply (failed, cancelled): it no longer counts as unfinished.",
            ("agent",), "history", HISTORY),
    request(subjects.HISTORY_MESSAGE_LIST, ListMessages, MessagePage,
            "List a session's messages, newest first.",
            ("gateway", "agent", "memory"), "history", HISTORY),
    request(subjects.HISTORY_FEED, ListFeed, MessagePage,
            "List a user's messages across sessions, newest first.", ("gateway",), "history",
            HISTORY),
    request(subjects.HISTORY_SEARCH, SearchMessages, MessagePage,
            "Find a user's messages containing a text (the search_history tool).",
            ("agent",), "history", HISTORY),
    request(subjects.HISTORY_PING, Ping, Pong, "Readiness probe of history.",
            ("gateway",), "history", HISTORY),
    request(subjects.MEMORY_RECALL, RecallMemories, MemoryPage,
            "List a user's memories, newest first, by persona and text.",
            ("gateway", "agent"), "memory", MEMORY),
    request(subjects.MEMORY_DELETE, DeleteMemory, MemoryDeleted,
            "Delete one memory of a user.", ("gateway",), "memory", MEMORY),
    request(subjects.MEMORY_PING, Ping, Pong, "Readiness probe of memory.",
            ("gateway",), "memory", MEMORY),
    request(subjects.AGENT_PING, Ping, Pong, "Readiness probe of the agent.",
            ("gateway",), "agent", AGENT),
    request(subjects.AGENT_TOOLS_LIST, ListTools, ToolList,
            "List the tools the model can call now: built-in ones and those of every MCP "
            "server the replica reaches.", ("gateway",), "agent", AGENT),
    request(subjects.WEBHOOKS_ENDPOINT_CREATE, CreateEndpoint, EndpointCreated,
            "Register a webhook endpoint of a user (its secret is in the reply only).",
            ("gateway",), "webhooks", WEBHOOKS),
    request(subjects.WEBHOOKS_ENDPOINT_LIST, ListEndpoints, EndpointPage,
            "List a user's webhook endpoints, newest first.", ("gateway",), "webhooks", WEBHOOKS),
    request(subjects.WEBHOOKS_ENDPOINT_DELETE, DeleteEndpoint, EndpointDeleted,
            "Delete a user's webhook endpoint.", ("gateway",), "webhooks", WEBHOOKS),
    request(subjects.WEBHOOKS_DELIVERY_LIST, ListDeliveries, DeliveryPage,
            "List an endpoint's deliveries with their attempts, newest first.",
            ("gateway",), "webhooks", WEBHOOKS),
    request(subjects.WEBHOOKS_DELIVERY_RESEND, ResendDelivery, DeliveryReply,
            "Send a delivery's event to its endpoint again, as a new delivery.",
            ("gateway",), "webhooks", WEBHOOKS),
    request(subjects.WEBHOOKS_PING, Ping, Pong,
            "Health probe of the webhooks service (answers when its database does).",
            ("gateway",), "webhooks", WEBHOOKS),
    # JetStream: stored, delivered at least once, acknowledged explicitly.
    Channel(subjects.CHAT_REQUESTED, RequestChat,
            "A chat job: answer the user's message. Published by history's outbox in the "
            "transaction that stored the message; `Nats-Msg-Id` is the job id. Every agent "
            "replica pulls from one shared durable consumer, acks after the outcome is stored, "
            "and heartbeats the message while the job waits for its turn or runs.",
            ("history",), ("agent",), stream=subjects.CHAT_JOBS_STREAM,
            durable=subjects.AGENT_DURABLE),
    job_event("status", JobState,
              "The job's state changed in a way a client sees: running (a new attempt), "
              "queued again before a retry."),
    job_event("delta", ChatDelta, "A piece of the reply as the model writes it."),
    job_event("tool_call", ToolCalled, "The model called a tool (arguments as it sent them)."),
    job_event("tool_result", ToolReturned,
              "A tool answered (the result cut to TOOL_RESULT_EVENT_CHARS, 2,000 characters)."),
    job_event("completed", JobState,
              "The job ended with a reply (its final state; `Nats-Msg-Id` `<job>.final`)."),
    job_event("failed", JobState, "The job ended without a reply; `error` says why."),
    job_event("cancelled", JobState, "The job was cancelled; no reply was stored."),
    Channel(subjects.SESSION_ARCHIVED, SessionArchived,
            "A session was archived (from history's outbox): memory summarises it.",
            ("history",), ("memory",), stream=subjects.SESSION_EVENTS_STREAM,
            durable=subjects.MEMORY_ARCHIVED_DURABLE),
    Channel(subjects.SESSION_DELETED, SessionDeleted,
            "A session was deleted (from history's outbox): memory forgets its memories.",
            ("history",), ("memory",), stream=subjects.SESSION_EVENTS_STREAM,
            durable=subjects.MEMORY_DELETED_DURABLE),
    Channel(subjects.MEMORY_STORED, MemoriesStored,
            "Memories of an archived session are stored: the webhooks service tells the "
            "user's endpoints (memory.created); open to consumers outside chatbus.",
            ("memory",), ("webhooks",), stream=subjects.MEMORY_EVENTS_STREAM,
            durable=subjects.WEBHOOKS_MEMORY_DURABLE),
    Channel(subjects.WEBHOOK_DELIVER, DeliverWebhook,
            "One webhook delivery to try, published by the webhooks service when an event "
            "fans out to an endpoint (or a user asks for a resend); a failed try is nak'ed "
            "with the backoff as its delay, for up to WEBHOOK_RETRY_HOURS.",
            ("webhooks",), ("webhooks",), stream=subjects.WEBHOOK_DELIVERIES_STREAM,
            durable=subjects.WEBHOOKS_DELIVER_DURABLE),
    Channel(subjects.deadletter("{service}"), DeadLetter,
            "A message a service gave up on, kept for an operator.",
            ("history", "memory", "agent", "webhooks"), stream=subjects.DEADLETTER_STREAM,
            parameters={"service": "the service that gave up: history, memory, agent or webhooks"}),
    # JetStream key-value buckets.
    entry(subjects.JOBS_BUCKET, "job_id", JobState,
          "A job's state under its id: created by the gateway, moved on only by the agent "
          "(compare-and-set), watched by the gateway for `?wait=` and by agents for order.",
          JOB_ID["job_id"], ("gateway", "agent")),
    entry(subjects.CANCELS_BUCKET, "job_id", CancelRequest,
          "A user asked to stop the job: written by the gateway, watched by every agent "
          "replica (a queued job is never started, a running one is stopped).",
          JOB_ID["job_id"], ("gateway", "agent")),
)
