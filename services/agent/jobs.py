"""Job states in the ``chat_jobs`` bucket: the agent moves them by compare-and-set."""

from uuid import UUID

from faststream.nats import NatsBroker

from contracts.chat import JobState
from services.agent.errors import JobConflict, JobStoreError
from services.runtime.bus import jobs_bucket
from services.runtime.kv import Entries, KvConflict, KvError, Versioned


class KvJobStore:
    """Read and write ``JobState`` JSON under the job id."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._entries: Entries[JobState] | None = None

    async def open(self, broker: NatsBroker) -> None:
        """Bind to the bucket (created on first use) over the connected broker."""
        self._entries = Entries(await jobs_bucket(broker), JobState, self.timeout)

    @property
    def entries(self) -> Entries[JobState]:
        """Return the bound bucket."""
        if self._entries is None:
            raise JobStoreError("the job store is not open yet")
        return self._entries

    async def get(self, job_id: UUID) -> Versioned[JobState] | None:
        """Return the job's state, or None when the bucket has none."""
        try:
            return await self.entries.get(str(job_id))
        except KvError as exc:
            raise JobStoreError(f"job store: {exc}") from exc

    async def create(self, state: JobState) -> Versioned[JobState]:
        """Store a new job; raise :class:`JobConflict` when it exists already."""
        try:
            return await self.entries.create(str(state.id), state)
        except KvConflict as exc:
            raise JobConflict(f"job {state.id} exists already") from exc
        except KvError as exc:
            raise JobStoreError(f"job store: {exc}") from exc

    async def update(self, state: JobState, revision: int) -> Versioned[JobState]:
        """Replace the job's state if it is still at ``revision``."""
        try:
            return await self.entries.update(str(state.id), state, revision)
        except KvConflict as exc:
            raise JobConflict(f"job {state.id} changed since revision {revision}") from exc
        except KvError as exc:
            raise JobStoreError(f"job store: {exc}") from exc

    async def wait_ended(self, job_id: UUID, timeout: float) -> bool:
        """Watch a job until it ends (or is gone); return False when ``timeout`` passed first."""
        found = await self.get(job_id)  # one round trip when it has ended already
        if found is None or found.value.finished:
            return True
        try:
            latest = await self.entries.wait(
                str(job_id), timeout, lambda state: state is None or state.finished
            )
        except KvError as exc:
            raise JobStoreError(f"job store: {exc}") from exc
        if latest is None:  # deleted meanwhile, or no value arrived in time: look
            found = await self.get(job_id)
            return found is None or found.value.finished
        return latest.value.finished
