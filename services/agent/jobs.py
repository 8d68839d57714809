"""Job states and lanes in JetStream KV buckets, updated by compare-and-set on the revision."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

import nats.errors
from faststream.nats import NatsBroker
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from contracts.chat import JobLane, JobState
from services.agent.errors import JobConflict, JobStoreError
from services.runtime.bus import jobs_bucket, lanes_bucket
from services.runtime.lanes import Lanes


@dataclass(frozen=True)
class Versioned:
    """A job state and the bucket revision it was read or written at."""

    state: JobState
    revision: int


class KvJobStore:
    """Read and write ``JobState`` JSON under the job id."""

    def __init__(self) -> None:
        self._kv: KeyValue | None = None

    async def open(self, broker: NatsBroker) -> None:
        """Bind to the bucket (created on first use) over the connected broker."""
        self._kv = await jobs_bucket(broker)

    @property
    def kv(self) -> KeyValue:
        """Return the bound bucket."""
        if self._kv is None:
            raise JobStoreError("the job store is not open yet")
        return self._kv

    async def get(self, job_id: UUID) -> Versioned | None:
        """Return the job's state, or None when the bucket has none."""
        try:
            entry = await self.kv.get(str(job_id))
        except KeyNotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise JobStoreError(f"job store unavailable: {exc!r}") from exc
        if entry.value is None or entry.revision is None:
            return None
        try:
            return Versioned(JobState.model_validate_json(entry.value), entry.revision)
        except ValidationError as exc:
            raise JobStoreError(f"job {job_id} holds an unreadable state") from exc

    async def create(self, state: JobState) -> Versioned:
        """Store a new job; raise :class:`JobConflict` when it exists already."""
        try:
            revision = await self.kv.create(str(state.id), state.model_dump_json().encode())
        except KeyWrongLastSequenceError as exc:
            raise JobConflict(f"job {state.id} exists already") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise JobStoreError(f"job store unavailable: {exc!r}") from exc
        return Versioned(state, revision)

    async def update(self, state: JobState, revision: int) -> Versioned:
        """Replace the job's state if it is still at ``revision``."""
        try:
            value = state.model_dump_json().encode()
            new = await self.kv.update(str(state.id), value, last=revision)
        except KeyWrongLastSequenceError as exc:
            raise JobConflict(f"job {state.id} changed since revision {revision}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise JobStoreError(f"job store unavailable: {exc!r}") from exc
        return Versioned(state, new)


class KvLanes:
    """The lanes bucket, bound once the broker is connected."""

    def __init__(self) -> None:
        self._lanes: Lanes | None = None

    async def open(self, broker: NatsBroker) -> None:
        """Bind to the bucket (created on first use) over the connected broker."""
        self._lanes = Lanes(await lanes_bucket(broker))

    @property
    def lanes(self) -> Lanes:
        """Return the bound lanes."""
        if self._lanes is None:
            raise JobStoreError("the lanes are not open yet")
        return self._lanes

    async def prune(self, key: str, is_finished: Callable[[UUID], Awaitable[bool]]) -> JobLane:
        """Drop the ended jobs of a lane and return what is left."""
        return await self.lanes.prune(key, is_finished)

    async def remove(self, key: str, job_id: UUID) -> JobLane:
        """Drop a job from a lane."""
        return await self.lanes.remove(key, job_id)
