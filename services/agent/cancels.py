"""Cancel requests, as every agent replica hears them: a watch over the whole cancel bucket.

The gateway writes a :class:`~contracts.chat.CancelRequest` under the job id;
each replica keeps the ids it has seen (the watch replays the bucket's current
entries first), so a job picked up later is ended at once, and a job running
or waiting here is stopped the moment the request arrives.
"""

import asyncio
import time
from collections.abc import Callable
from uuid import UUID

import nats.errors
import structlog
from faststream.nats import NatsBroker
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import ValidationError

from contracts.chat import CancelRequest
from services.runtime.bus import JOB_TTL_SECONDS, cancels_bucket
from services.runtime.logging import spawn

log = structlog.get_logger("chatbus.agent.cancels")
RETRY_PAUSE = 1.0
STOP_TIMEOUT = 5.0
PRUNE_EVERY = 1000  # requests heard between two prunes of those past the bucket's TTL


class CancelWatch:
    """Know which jobs a user asked to stop, and tell ``on_cancel`` as requests arrive."""

    def __init__(self, on_cancel: Callable[[UUID], object]) -> None:
        self.on_cancel = on_cancel
        self.requested: dict[UUID, float] = {}  # job id -> when heard (monotonic)
        self._prune_at = PRUNE_EVERY
        self.ready = asyncio.Event()  # the bucket's current entries are known
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.requested

    async def start(self, broker: NatsBroker) -> None:
        """Watch the bucket from now on; return once its current entries are known."""
        kv = await cancels_bucket(broker)
        self._task = spawn(self._watch_forever(kv), "agent-cancel-watch")
        await asyncio.wait_for(self.ready.wait(), timeout=30)

    async def stop(self) -> None:
        """Stop watching (bounded: nats-py can swallow a cancel that meets an update)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=STOP_TIMEOUT)

    def _remember(self, job_id: UUID) -> None:
        now = time.monotonic()
        self.requested[job_id] = now
        if len(self.requested) >= self._prune_at:
            # The bucket forgets a request after its TTL; so does this replica.
            self.requested = {
                job: at for job, at in self.requested.items() if now - at < JOB_TTL_SECONDS
            }
            self._prune_at = len(self.requested) + PRUNE_EVERY

    async def _watch_forever(self, kv: KeyValue) -> None:
        while not self._stopping:
            try:
                await self._watch(kv)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The ordered consumer behind the watch died with the connection: watch anew.
                log.warning("cancel watch lost; watching again", error=repr(exc))
                await asyncio.sleep(RETRY_PAUSE)

    async def _watch(self, kv: KeyValue) -> None:
        watcher = await kv.watchall()
        try:
            while not self._stopping:
                try:
                    entry = await watcher.updates(timeout=60)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    continue
                if entry is None:  # the end of the current entries
                    self.ready.set()
                    continue
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    continue
                try:
                    job_id = CancelRequest.model_validate_json(entry.value).job_id
                except ValidationError:
                    log.warning("unreadable cancel request ignored", key=entry.key)
                    continue
                if job_id not in self.requested:
                    self._remember(job_id)
                    self.on_cancel(job_id)
        finally:
            try:
                await watcher.stop()  # type: ignore[no-untyped-call]
            except (nats.errors.Error, TimeoutError):
                pass
