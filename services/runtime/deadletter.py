"""Park a message a service cannot process where an operator can inspect it."""

from typing import Any

import structlog
from nats.errors import NotJSMessageError

from contracts import subjects
from contracts.base import utcnow
from contracts.deadletter import DeadLetter
from services.runtime.bus import BusClient
from services.runtime.meta import BusError, RequestMeta

log = structlog.get_logger("chatbus.deadletter")


class DeadLetterPublisher:
    """Publish dead letters of one service to the DEADLETTER stream."""

    def __init__(self, bus: BusClient, service: str) -> None:
        self.bus = bus
        self.service = service

    async def publish(self, msg: Any, reason: str) -> None:
        """Dead-letter a raw NATS message with the reason; never raise."""
        raw = getattr(msg, "raw_message", msg)
        headers = {str(k): str(v) for k, v in (getattr(raw, "headers", None) or {}).items()}
        try:
            metadata = getattr(raw, "metadata", None)
        except NotJSMessageError:  # a core NATS request has no delivery count
            metadata = None
        deliveries = getattr(metadata, "num_delivered", None) or 1
        letter = DeadLetter(
            service=self.service,
            subject=str(getattr(raw, "subject", "")),
            reason=reason[:4000],
            payload=bytes(getattr(raw, "data", b"") or b"").decode("utf-8", "replace"),
            headers=headers,
            deliveries=int(deliveries),
            failed_at=utcnow(),
        )
        log.error("message dead-lettered", reason=reason[:500], dead_subject=letter.subject)
        try:
            await self.bus.publish(
                subjects.deadletter(self.service),
                letter,
                RequestMeta.from_headers(headers),
                stream=subjects.DEADLETTER_STREAM.name,
            )
        except BusError:
            log.exception("could not publish dead letter")
