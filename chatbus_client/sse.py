"""Server-sent events from the lines of a ``text/event-stream`` body, and resuming a stream."""

from dataclasses import dataclass, field

from chatbus_client.errors import ChatbusError, ConnectionFailed

MAX_BACKOFF = 8.0
TRANSIENT = frozenset({0, 429, 502, 503, 504})


@dataclass(frozen=True)
class RawEvent:
    """One event as the wire carries it."""

    name: str
    data: str
    id: str | None


@dataclass
class SseParser:
    """Build events from lines (without their line endings), one line at a time."""

    name: str = ""
    data: list[str] = field(default_factory=list)
    id: str | None = None

    def feed(self, line: str) -> RawEvent | None:
        """Take one line; return the event a blank line completes."""
        if not line:
            event = RawEvent(self.name or "message", "\n".join(self.data), self.id)
            complete = bool(self.data or self.name)
            self.name, self.data, self.id = "", [], None
            return event if complete else None
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive ping
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            self.name = value
        elif key == "data":
            self.data.append(value)
        elif key == "id" and "\0" not in value:
            self.id = value
        return None


class Resumption:
    """Where a job's stream is, and whether to reconnect after it broke."""

    def __init__(self, last_event_id: str | None, max_reconnects: int) -> None:
        self.last_event_id = last_event_id
        self.max_reconnects = max_reconnects
        self.failures = 0

    def seen(self, event_id: str | None) -> None:
        """Remember the last event received; the connection works again."""
        if event_id:
            self.last_event_id = event_id
        self.failures = 0

    def headers(self) -> dict[str, str]:
        """Return the headers of the next connection."""
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def delay(self, error: Exception) -> float:
        """Return how long to wait before reconnecting, or raise when it is time to give up."""
        if isinstance(error, ChatbusError) and error.status not in TRANSIENT:
            raise error
        self.failures += 1
        if self.failures > self.max_reconnects:
            raise ConnectionFailed(
                f"the event stream broke {self.failures} times in a row; last: {error}",
                title="Stream lost",
            ) from error
        retry_after = error.retry_after if isinstance(error, ChatbusError) else None
        if retry_after is not None:
            return retry_after
        return float(min(MAX_BACKOFF, 0.25 * 2 ** (self.failures - 1)))


def stream_ended() -> ConnectionFailed:
    """Return the error of a stream that ended before its final event."""
    return ConnectionFailed("the event stream ended before the job did", title="Stream ended")
