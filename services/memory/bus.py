"""The memory service's calls over the bus: history's messages and its own events."""

from uuid import UUID

from contracts import subjects
from contracts.history import MAX_PAGE, ListMessages, MessagePage, MessageRecord
from contracts.memory import MemoriesStored
from services.memory.errors import EventNotStored, HistoryUnavailable
from services.runtime.bus import BusClient
from services.runtime.meta import BusError, Refused, RequestMeta

# A session is read in pages; this bounds the pages of one (huge) session.
MAX_PAGES = 1000


class BusHistory:
    """Read a session's messages from the history service."""

    def __init__(self, bus: BusClient, timeout: float) -> None:
        self.bus = bus
        self.timeout = timeout

    async def session_messages(
        self, user_id: str, session_id: UUID, meta: RequestMeta
    ) -> list[MessageRecord] | None:
        """Return every message of the session, oldest first; None if it does not exist."""
        newest_first: list[MessageRecord] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            request = ListMessages(
                user_id=user_id, session_id=session_id, limit=MAX_PAGE, cursor=cursor
            )
            try:
                page = await self.bus.ask(
                    subjects.HISTORY_MESSAGE_LIST, request, MessagePage, meta, self.timeout
                )
            except Refused as exc:
                if exc.error.code == "not_found":
                    return None
                raise HistoryUnavailable(f"history refused: {exc}") from exc
            except BusError as exc:
                raise HistoryUnavailable(f"history did not list the messages: {exc}") from exc
            newest_first.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                return newest_first[::-1]
        raise HistoryUnavailable(f"session has more than {MAX_PAGES} pages of messages")


class BusEvents:
    """Publish the memory service's events to JetStream."""

    def __init__(self, bus: BusClient, timeout: float) -> None:
        self.bus = bus
        self.timeout = timeout

    async def memories_stored(self, event: MemoriesStored, meta: RequestMeta) -> None:
        """Publish that a session's memories are stored (deduplicated by session)."""
        try:
            await self.bus.publish(
                subjects.MEMORY_STORED,
                event,
                meta,
                stream=subjects.MEMORY_EVENTS_STREAM.name,
                msg_id=f"{event.session_id}.memories",
                timeout=self.timeout,
            )
        except BusError as exc:
            raise EventNotStored(f"MemoriesStored not stored: {exc}") from exc
