"""The events of a job's stream, typed, and :class:`ReplyText` that turns them into the reply.

A stream sends ``status`` (the Job) whenever the job visibly changes, ``delta``
for each piece of the reply, ``tool_call`` and ``tool_result`` around each tool
the model runs, then exactly one final event, ``completed``, ``failed`` or
``cancelled`` (the Job), and ends. Event ids are opaque: pass the last one back
to resume. Events of a name this client does not know arrive as
:class:`UnknownEvent`, so a newer server never breaks an older client.
"""

import json
from typing import Any, Literal

from pydantic import ValidationError

from chatbus_client.errors import ServerError
from chatbus_client.models import Job, Model


class Event(Model):
    """Base of every event: its id, to resume after it."""

    id: str | None = None

    @property
    def final(self) -> bool:
        """Tell whether the stream ends with this event."""
        return False


class StatusEvent(Event):
    """The job changed: queued, running, or another attempt began (``attempts`` grew)."""

    kind: Literal["status"] = "status"
    job: Job


class DeltaEvent(Event):
    """A piece of the reply, as the model writes it."""

    kind: Literal["delta"] = "delta"
    text: str


class ToolCallEvent(Event):
    """The model called a tool."""

    kind: Literal["tool_call"] = "tool_call"
    call_id: str
    name: str
    arguments: Any = None


class ToolResultEvent(Event):
    """A tool answered the model."""

    kind: Literal["tool_result"] = "tool_result"
    call_id: str
    name: str
    result: Any = None
    truncated: bool = False


class FinalEvent(Event):
    """The job ended; ``job`` carries the whole reply when it completed."""

    job: Job

    @property
    def final(self) -> bool:
        """Tell whether the stream ends with this event: always."""
        return True


class CompletedEvent(FinalEvent):
    """The job completed: ``job.reply`` is the stored reply."""

    kind: Literal["completed"] = "completed"


class FailedEvent(FinalEvent):
    """The job failed: ``job.error`` says why."""

    kind: Literal["failed"] = "failed"


class CancelledEvent(FinalEvent):
    """The job was cancelled; its partial reply is not stored."""

    kind: Literal["cancelled"] = "cancelled"


class UnknownEvent(Event):
    """An event of a name this client does not know; ``data`` is its raw text."""

    kind: Literal["unknown"] = "unknown"
    name: str
    data: str


JobEvent = (
    StatusEvent | DeltaEvent | ToolCallEvent | ToolResultEvent | CompletedEvent | FailedEvent
    | CancelledEvent | UnknownEvent
)
_JOB_EVENTS: dict[str, type[StatusEvent | CompletedEvent | FailedEvent | CancelledEvent]] = {
    "status": StatusEvent,
    "completed": CompletedEvent,
    "failed": FailedEvent,
    "cancelled": CancelledEvent,
}
_DATA_EVENTS: dict[str, type[DeltaEvent | ToolCallEvent | ToolResultEvent]] = {
    "delta": DeltaEvent,
    "tool_call": ToolCallEvent,
    "tool_result": ToolResultEvent,
}


def parse_event(name: str, data: str, event_id: str | None) -> JobEvent:
    """Build the typed event of one server-sent event."""
    try:
        if name in _JOB_EVENTS:
            return _JOB_EVENTS[name](id=event_id, job=Job.model_validate_json(data))
        if name in _DATA_EVENTS:
            return _DATA_EVENTS[name].model_validate({**json.loads(data), "id": event_id})
    except (ValidationError, ValueError, TypeError) as exc:
        raise ServerError(f"malformed {name!r} event {event_id}: {exc}") from exc
    return UnknownEvent(id=event_id, name=name, data=data)


class ReplyText:
    """Accumulate a reply from its events: restarts on a retry, ends with the stored text."""

    def __init__(self) -> None:
        self.text = ""
        self.attempts: int | None = None
        self.job: Job | None = None

    def apply(self, event: JobEvent) -> str:
        """Take one event into account; return the text it added (empty if none)."""
        if isinstance(event, StatusEvent):
            if self.attempts is not None and event.job.attempts != self.attempts:
                self.text = ""  # another attempt: its reply is written from scratch
            self.attempts, self.job = event.job.attempts, event.job
        elif isinstance(event, DeltaEvent):
            self.text += event.text
            return event.text
        elif isinstance(event, FinalEvent):
            self.job = event.job
            if isinstance(event, CompletedEvent) and event.job.reply is not None:
                self.text = event.job.reply.content  # the stored reply is the one that counts
        return ""
