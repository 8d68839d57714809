"""The agent's read-only lookups for context and tools: memory recall and history search."""

from contracts import subjects
from contracts.history import MessagePage, MessageRecord, SearchMessages
from contracts.memory import MemoryPage, MemoryRecord, RecallMemories
from services.agent.errors import HistoryError, RecallError
from services.runtime.bus import BusClient
from services.runtime.meta import BusError, Refused, RequestMeta


class BusMemory:
    """Ask the memory service for a user's memories."""

    def __init__(self, bus: BusClient, timeout: float) -> None:
        self.bus = bus
        self.timeout = timeout

    async def recall(self, query: RecallMemories, meta: RequestMeta) -> list[MemoryRecord]:
        """Return the user's memories matching the query, newest first."""
        try:
            page = await self.bus.ask(subjects.MEMORY_RECALL, query, MemoryPage, meta, self.timeout)
        except (BusError, Refused) as exc:
            raise RecallError(f"memory did not recall: {exc}") from exc
        return list(page.items)


class BusSearch:
    """Ask the history service to search a user's messages."""

    def __init__(self, bus: BusClient, timeout: float) -> None:
        self.bus = bus
        self.timeout = timeout

    async def search(self, query: SearchMessages, meta: RequestMeta) -> list[MessageRecord]:
        """Return the user's messages containing the query, newest first."""
        try:
            page = await self.bus.ask(
                subjects.HISTORY_SEARCH, query, MessagePage, meta, self.timeout
            )
        except (BusError, Refused) as exc:
            raise HistoryError(f"history did not search: {exc}") from exc
        return list(page.items)
