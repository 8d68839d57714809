"""What a service publishes when it gives up on a message."""

from datetime import datetime

from pydantic import Field

from contracts.base import Contract


class DeadLetter(Contract):
    """A message a service could not process, kept for an operator to inspect."""

    service: str
    subject: str
    reason: str = Field(max_length=4000)
    payload: str = Field(description="the original body, decoded as UTF-8 with replacement")
    headers: dict[str, str] = Field(default_factory=dict)
    deliveries: int = 1
    failed_at: datetime
