"""Rules of the memory service (generation itself is not built yet)."""

import structlog

from contracts.sessions import SessionArchived

log = structlog.get_logger("chatbus.memory")


class MemoryService:
    """React to archived sessions."""

    def __init__(self) -> None:
        self.seen = 0

    async def on_session_archived(self, event: SessionArchived) -> None:
        """Record that a session was archived; memory generation is not implemented yet."""
        self.seen += 1
        log.info(
            "session archived; memory generation is not implemented yet",
            session_id=str(event.session_id),
            persona=event.persona,
        )
