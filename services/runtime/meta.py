"""What travels with every message, and the bus's errors, free of any NATS import.

Errors raised by the bus clients::

    BusError
     ├── BusUnavailable   no connection, or nobody serves the subject
     ├── BusTimeout       the deadline passed without an answer
     └── BusProtocolError the answer did not match the reply contract
    Refused               the service answered with an error (``.error``: code and message)
"""

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from contracts import subjects
from contracts.base import BusError as ErrorReply


class BusError(Exception):
    """A call over the bus did not produce a usable answer."""


class BusUnavailable(BusError):
    """The bus or the service behind a subject is not reachable."""


class BusTimeout(BusError):
    """The deadline passed before an answer arrived."""


class BusProtocolError(BusError):
    """The answer did not match the reply contract."""


class Refused(Exception):
    """The service answered the request with an error instead of a result."""

    def __init__(self, subject: str, error: ErrorReply) -> None:
        super().__init__(f"{subject}: {error.code}: {error.message}")
        self.subject = subject
        self.error = error


@dataclass(frozen=True)
class RequestMeta:
    """What travels in NATS headers with every request and event."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    user_id: str | None = None
    deadline: float | None = None

    def headers(self) -> dict[str, str]:
        """Render as NATS headers."""
        out = {subjects.HEADER_REQUEST_ID: self.request_id}
        if self.user_id is not None:
            out[subjects.HEADER_USER_ID] = self.user_id
        if self.deadline is not None:
            out[subjects.HEADER_DEADLINE] = f"{self.deadline:.3f}"
        return out

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> "RequestMeta":
        """Read from NATS headers; a missing request id gets a fresh one."""
        headers = headers or {}
        try:
            deadline: float | None = float(headers.get(subjects.HEADER_DEADLINE) or "nan")
        except ValueError:
            deadline = None  # a garbled deadline is no deadline, not a reason to drop the message
        if deadline is not None and deadline != deadline:
            deadline = None
        return cls(
            request_id=headers.get(subjects.HEADER_REQUEST_ID) or uuid.uuid4().hex,
            user_id=headers.get(subjects.HEADER_USER_ID),
            deadline=deadline,
        )

    def remaining(self, default: float) -> float:
        """Return the seconds left before the deadline, or ``default`` without one."""
        if self.deadline is None:
            return default
        return max(0.0, self.deadline - time.time())
