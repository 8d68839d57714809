"""Subject, stream and bucket names: the only place they are spelled."""

from dataclasses import dataclass

# JetStream: durable commands and events.
CHAT_REQUESTED = "chat.requested"
# Every event of one job, on ``chat.job.<job_id>.<kind>`` (JOB_EVENTS stream).
CHAT_JOB_PREFIX = "chat.job"
JOB_EVENT_KINDS = (
    "status", "delta", "tool_call", "tool_result", "completed", "failed", "cancelled",
)
SESSION_ARCHIVED = "session.archived"
SESSION_DELETED = "session.deleted"
MEMORY_STORED = "memory.stored"
# One message per webhook delivery to try (WEBHOOK_DELIVERIES stream).
WEBHOOK_DELIVER = "webhooks.deliver"
DEADLETTER_PREFIX = "deadletter"

# Core NATS request-reply, served by queue groups.
HISTORY_SESSION_CREATE = "history.session.create"
HISTORY_SESSION_GET = "history.session.get"
HISTORY_SESSION_LIST = "history.session.list"
HISTORY_MESSAGE_APPEND = "history.message.append"
HISTORY_MESSAGE_LIST = "history.message.list"
HISTORY_JOB_END = "history.job.end"
HISTORY_SESSION_ARCHIVE = "history.session.archive"
HISTORY_SESSION_DELETE = "history.session.delete"
HISTORY_FEED = "history.feed"
HISTORY_SEARCH = "history.search"
HISTORY_PING = "history.ping"
MEMORY_PING = "memory.ping"
MEMORY_RECALL = "memory.recall"
MEMORY_DELETE = "memory.delete"
AGENT_PING = "agent.ping"
AGENT_TOOLS_LIST = "agent.tools.list"
WEBHOOKS_ENDPOINT_CREATE = "webhooks.endpoint.create"
WEBHOOKS_ENDPOINT_LIST = "webhooks.endpoint.list"
WEBHOOKS_ENDPOINT_DELETE = "webhooks.endpoint.delete"
WEBHOOKS_DELIVERY_LIST = "webhooks.delivery.list"
WEBHOOKS_DELIVERY_RESEND = "webhooks.delivery.resend"
WEBHOOKS_PING = "webhooks.ping"

# Queue groups and durable consumer names.
HISTORY_QUEUE = "history"
MEMORY_QUEUE = "memory"
AGENT_QUEUE = "agent"
AGENT_DURABLE = "agent-chat"
MEMORY_ARCHIVED_DURABLE = "memory-session-archived"
MEMORY_DELETED_DURABLE = "memory-session-deleted"
WEBHOOKS_QUEUE = "webhooks"
WEBHOOKS_JOBS_DURABLE = "webhooks-job-events"
WEBHOOKS_MEMORY_DURABLE = "webhooks-memory-events"
WEBHOOKS_DELIVER_DURABLE = "webhooks-deliver"
# The final events of jobs, the only job events webhooks are about.
JOB_FINAL_KINDS = ("completed", "failed", "cancelled")

# JetStream key-value bucket holding every job's state (created by the gateway,
# moved on only by the agent).
JOBS_BUCKET = "chat_jobs"
# JetStream key-value bucket of cancel requests, key: the job id (written by the
# gateway, watched by every agent replica).
CANCELS_BUCKET = "chat_cancels"
# The per-minute message limit counts the messages of this window.
RATE_WINDOW_SECONDS = 60.0

# NATS headers carried by every request and event.
HEADER_REQUEST_ID = "Chatbus-Request-Id"
HEADER_USER_ID = "Chatbus-User-Id"
HEADER_DEADLINE = "Chatbus-Deadline"


def job_event(job_id: object, kind: str) -> str:
    """Return the subject of one kind of event of one job."""
    return f"{CHAT_JOB_PREFIX}.{job_id}.{kind}"


def job_events(job_id: object) -> str:
    """Return the filter of every event of one job (its replayable stream)."""
    return f"{CHAT_JOB_PREFIX}.{job_id}.*"


def deadletter(service: str) -> str:
    """Return the dead-letter subject of one service."""
    return f"{DEADLETTER_PREFIX}.{service}"


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream every service agrees on."""

    name: str
    subjects: tuple[str, ...]
    max_age_seconds: float
    duplicate_window_seconds: float = 120.0


CHAT_JOBS_STREAM = StreamSpec("CHAT_JOBS", (CHAT_REQUESTED,), max_age_seconds=7 * 86400)
# Deltas and tool events are kept JOB_EVENTS_MAX_AGE (a setting; this is its default);
# a job's final state outlives them in the job bucket.
JOB_EVENTS_STREAM = StreamSpec("JOB_EVENTS", (f"{CHAT_JOB_PREFIX}.>",), max_age_seconds=3600)
SESSION_EVENTS_STREAM = StreamSpec(
    "SESSION_EVENTS", (SESSION_ARCHIVED, SESSION_DELETED), max_age_seconds=30 * 86400
)
MEMORY_EVENTS_STREAM = StreamSpec("MEMORY_EVENTS", (MEMORY_STORED,), max_age_seconds=30 * 86400)
# A delivery's message is redelivered (nak with delay) for up to WEBHOOK_RETRY_HOURS.
WEBHOOK_DELIVERIES_STREAM = StreamSpec(
    "WEBHOOK_DELIVERIES", (WEBHOOK_DELIVER,), max_age_seconds=3 * 86400
)
DEADLETTER_STREAM = StreamSpec(
    "DEADLETTER", (f"{DEADLETTER_PREFIX}.>",), max_age_seconds=30 * 86400
)
ALL_STREAMS = (
    CHAT_JOBS_STREAM,
    JOB_EVENTS_STREAM,
    SESSION_EVENTS_STREAM,
    MEMORY_EVENTS_STREAM,
    WEBHOOK_DELIVERIES_STREAM,
    DEADLETTER_STREAM,
)
