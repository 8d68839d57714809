"""Ordered lists of unfinished jobs kept in a KV bucket, changed by compare-and-set.

A session's lane gives per-session order (a job runs when it is the oldest
unfinished one of its session); a user's lane gives the per-user limit. The
gateway appends when it queues a job; whoever writes a job's final state
removes it. A lane can hold a job that ended without being removed (a crash
between the two writes): readers prune such entries with :meth:`Lanes.prune`.
"""

from collections.abc import Awaitable, Callable
from uuid import UUID

import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from contracts.chat import JobLane

MAX_CAS_ROUNDS = 50


class LaneError(Exception):
    """The lanes bucket could not be read or written."""


class LaneFull(LaneError):
    """Appending would exceed the lane's limit."""

    def __init__(self, key: str, lane: JobLane) -> None:
        super().__init__(f"{key} already holds {len(lane.jobs)} unfinished jobs")
        self.lane = lane


class Lanes:
    """Read and change lanes with optimistic concurrency."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def read(self, key: str) -> tuple[JobLane, int | None]:
        """Return the lane and its revision (None when the key does not exist)."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return JobLane(), None
        except (nats.errors.Error, TimeoutError) as exc:
            raise LaneError(f"lanes unavailable: {exc!r}") from exc
        if not entry.value:
            return JobLane(), entry.revision
        try:
            return JobLane.model_validate_json(entry.value), entry.revision
        except ValidationError:
            return JobLane(), entry.revision  # unreadable: start the lane afresh

    async def append(self, key: str, job_id: UUID, limit: int | None = None) -> JobLane:
        """Add a job at the end (no-op if present); raise :class:`LaneFull` past ``limit``."""

        def add(lane: JobLane) -> JobLane:
            if job_id in lane.jobs:
                return lane
            if limit is not None and len(lane.jobs) >= limit:
                raise LaneFull(key, lane)
            return JobLane(jobs=(*lane.jobs, job_id))

        return await self.change(key, add)

    async def remove(self, key: str, job_id: UUID) -> JobLane:
        """Drop a job from the lane (no-op if absent)."""
        return await self.change(key, lambda lane: _without(lane, {job_id}))

    async def prune(
        self, key: str, is_finished: Callable[[UUID], Awaitable[bool]]
    ) -> JobLane:
        """Drop the jobs that have ended but were never removed."""
        lane, _ = await self.read(key)
        stale = {job for job in lane.jobs if await is_finished(job)}
        if not stale:
            return lane
        return await self.change(key, lambda current: _without(current, stale))

    async def change(self, key: str, edit: Callable[[JobLane], JobLane]) -> JobLane:
        """Apply ``edit`` to the lane and write it back, retrying on concurrent writes."""
        for _ in range(MAX_CAS_ROUNDS):
            lane, revision = await self.read(key)
            new = edit(lane)
            if new == lane and revision is not None:
                return lane
            try:
                value = new.model_dump_json().encode()
                if revision is None:
                    await self.kv.create(key, value)
                else:
                    await self.kv.update(key, value, last=revision)
            except KeyWrongLastSequenceError:
                continue
            except (nats.errors.Error, TimeoutError) as exc:
                raise LaneError(f"lanes unavailable: {exc!r}") from exc
            return new
        raise LaneError(f"{key} kept changing under {MAX_CAS_ROUNDS} concurrent writers")


def _without(lane: JobLane, jobs: set[UUID]) -> JobLane:
    return JobLane(jobs=tuple(job for job in lane.jobs if job not in jobs))
