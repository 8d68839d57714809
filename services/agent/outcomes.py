"""Announce how jobs ended: outcome events and dead letters, deduplicated by message id."""

from collections.abc import Callable
from datetime import datetime

from contracts.chat import ChatCompleted, ChatFailed, JobState
from contracts.deadletter import DeadLetter
from services.agent.ports import Delivery, Events
from services.runtime.bus import RequestMeta

SERVICE = "agent"


class Outcomes:
    """Publish what a finished job or an unusable message leaves behind."""

    def __init__(self, events: Events, clock: Callable[[], datetime]) -> None:
        self.events = events
        self.clock = clock

    async def announce(
        self, state: JobState, delivery: Delivery, meta: RequestMeta
    ) -> None:
        """Publish the outcome of a finished job; repeating it is harmless."""
        if state.status == "completed" and state.reply is not None:
            done = ChatCompleted(
                job_id=state.id, user_id=state.user_id, session_id=state.session_id,
                reply=state.reply,
            )
            await self.events.completed(done, meta)
        elif state.status == "failed" and state.error is not None:
            failed = ChatFailed(
                job_id=state.id, user_id=state.user_id, session_id=state.session_id,
                error=state.error, attempts=state.attempts,
            )
            await self.events.failed(failed, meta)
            letter = self.letter(delivery, state.error.message)
            await self.events.dead_letter(letter, meta, f"{state.id}.deadletter")

    async def dead_letter(self, delivery: Delivery, reason: str, meta: RequestMeta) -> None:
        """Keep a message the agent cannot use for an operator to inspect."""
        await self.events.dead_letter(self.letter(delivery, reason), meta, None)

    def letter(self, delivery: Delivery, reason: str) -> DeadLetter:
        """Wrap a delivery and the reason it was given up on."""
        return DeadLetter(
            service=SERVICE, subject=delivery.subject, reason=reason[:4000],
            payload=delivery.body.decode("utf-8", errors="replace"),
            headers=dict(delivery.headers), deliveries=delivery.num_delivered,
            failed_at=self.clock(),
        )
