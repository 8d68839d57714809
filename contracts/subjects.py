"""Subject, stream and bucket names: the only place they are spelled."""

import hashlib
from dataclasses import dataclass

# JetStream: durable commands and events.
CHAT_REQUESTED = "chat.requested"
CHAT_COMPLETED = "chat.completed"
CHAT_FAILED = "chat.failed"
SESSION_ARCHIVED = "session.archived"
SESSION_DELETED = "session.deleted"
MEMORY_STORED = "memory.stored"
DEADLETTER_PREFIX = "deadletter"

# Core NATS: token stream of one job (fire and forget; the final state is in KV).
CHAT_DELTA_PREFIX = "chat.delta"
# Core NATS broadcast to every agent replica: stop a running job now.
CHAT_CANCEL = "chat.cancel"

# Core NATS request-reply, served by queue groups.
HISTORY_SESSION_CREATE = "history.session.create"
HISTORY_SESSION_GET = "history.session.get"
HISTORY_SESSION_LIST = "history.session.list"
HISTORY_MESSAGE_APPEND = "history.message.append"
HISTORY_MESSAGE_LIST = "history.message.list"
HISTORY_SESSION_ARCHIVE = "history.session.archive"
HISTORY_SESSION_DELETE = "history.session.delete"
HISTORY_FEED = "history.feed"
HISTORY_SEARCH = "history.search"
HISTORY_PING = "history.ping"
MEMORY_PING = "memory.ping"
MEMORY_RECALL = "memory.recall"
MEMORY_DELETE = "memory.delete"
AGENT_PING = "agent.ping"

# Queue groups and durable consumer names.
HISTORY_QUEUE = "history"
MEMORY_QUEUE = "memory"
AGENT_QUEUE = "agent"
AGENT_DURABLE = "agent-chat"
MEMORY_ARCHIVED_DURABLE = "memory-session-archived"
MEMORY_DELETED_DURABLE = "memory-session-deleted"

# JetStream key-value bucket holding every job's state.
JOBS_BUCKET = "chat_jobs"
# JetStream key-value bucket of the unfinished jobs, in submission order, per
# session (key ``session.<id>``: per-session order) and per user (key
# ``user.<id>``: the per-user limit). Values are ``contracts.chat.JobLane``.
LANES_BUCKET = "chat_lanes"
# JetStream key-value bucket of the messages each user posted in the last
# RATE_WINDOW_SECONDS (key ``user.<id>``: a sliding window shared by every
# gateway replica); entries expire RATE_BUCKET_TTL_SECONDS after their last write.
RATE_BUCKET = "chat_rate"
RATE_WINDOW_SECONDS = 60.0
RATE_BUCKET_TTL_SECONDS = 2 * RATE_WINDOW_SECONDS

# NATS headers carried by every request and event.
HEADER_REQUEST_ID = "Chatbus-Request-Id"
HEADER_USER_ID = "Chatbus-User-Id"
HEADER_DEADLINE = "Chatbus-Deadline"


def chat_delta(job_id: str) -> str:
    """Return the core-NATS subject that carries one job's token deltas."""
    return f"{CHAT_DELTA_PREFIX}.{job_id}"


def session_lane(session_id: object) -> str:
    """Return the lanes-bucket key of a session's unfinished jobs."""
    return f"session.{session_id}"


def user_lane(user_id: str) -> str:
    """Return the lanes-bucket key of a user's unfinished jobs (user ids are hashed: any text)."""
    return f"user.{hashlib.sha256(user_id.encode()).hexdigest()[:32]}"


def user_rate(user_id: str) -> str:
    """Return the rate-bucket key of a user's recent messages (hashed like the user's lane)."""
    return user_lane(user_id)


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
CHAT_EVENTS_STREAM = StreamSpec(
    "CHAT_EVENTS", (CHAT_COMPLETED, CHAT_FAILED), max_age_seconds=7 * 86400
)
SESSION_EVENTS_STREAM = StreamSpec(
    "SESSION_EVENTS", (SESSION_ARCHIVED, SESSION_DELETED), max_age_seconds=30 * 86400
)
MEMORY_EVENTS_STREAM = StreamSpec("MEMORY_EVENTS", (MEMORY_STORED,), max_age_seconds=30 * 86400)
DEADLETTER_STREAM = StreamSpec(
    "DEADLETTER", (f"{DEADLETTER_PREFIX}.>",), max_age_seconds=30 * 86400
)
ALL_STREAMS = (
    CHAT_JOBS_STREAM,
    CHAT_EVENTS_STREAM,
    SESSION_EVENTS_STREAM,
    MEMORY_EVENTS_STREAM,
    DEADLETTER_STREAM,
)
