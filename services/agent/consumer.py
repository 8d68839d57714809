"""The shared durable pull consumer of chat jobs, driven with nats-py.

FastStream's concurrent pull subscriber fetches into a local queue whatever the
workers are busy with (faststream #2563) and, once stopping, drops fetched
messages without settling them. Here a fetch asks only for as many messages as
there are free workers, so nothing waits locally past its ack deadline, and a
stop is in our hands: stop fetching, let running jobs finish for a grace
period, then hand the rest back to the queue for another replica.
"""

import asyncio
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import nats.errors
import structlog
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts import subjects
from services.agent.config import Settings
from services.agent.service import JobRunner
from services.runtime.logging import failures_logged, spawn
from services.runtime.meta import RequestMeta
from services.runtime.settle import DeadLetters, Verdict, retry, settle

log = structlog.get_logger("chatbus.agent")
HAND_BACK_TIMEOUT = 10.0  # for cancelled jobs to write themselves back as queued
ERROR_PAUSE = 1.0
CRASHED = "job delivery crashed; redelivered after its ack deadline"


@dataclass(frozen=True)
class NatsDelivery:
    """A JetStream delivery as the job runner sees it."""

    msg: Msg

    @property
    def subject(self) -> str:
        """Return the subject the message was published on."""
        return self.msg.subject

    @property
    def body(self) -> bytes:
        """Return the raw body."""
        return self.msg.data

    @property
    def headers(self) -> Mapping[str, str]:
        """Return the NATS headers."""
        return {key: str(value) for key, value in (self.msg.headers or {}).items()}

    @property
    def num_delivered(self) -> int:
        """Return how many times JetStream delivered this message, this time included."""
        return int(self.msg.metadata.num_delivered or 1)

    async def in_progress(self) -> None:
        """Reset the ack deadline."""
        await self.msg.in_progress()


class JobConsumer:
    """Fetch chat jobs while workers are free and run each in its own task."""

    def __init__(
        self,
        broker: NatsBroker,
        runner: JobRunner,
        settings: Settings,
        dead_letters: DeadLetters | None = None,
        observe: Callable[[Msg], AbstractContextManager[None]] = lambda _: nullcontext(),
    ) -> None:
        self.dead_letters = dead_letters
        self.observe = observe  # wraps each delivery (metrics, span)
        self.broker = broker
        self.runner = runner
        self.settings = settings
        self.tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._stopping = False
        self._sub: JetStreamContext.PullSubscription | None = None
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind to the durable consumer and start fetching."""
        js = self.broker.connection.jetstream()
        self._sub = await js.pull_subscribe_bind(
            durable=subjects.AGENT_DURABLE, stream=subjects.CHAT_JOBS_STREAM.name
        )
        self._loop = spawn(self._fetch_forever(self._sub), "agent-job-fetch")

    async def stop(self) -> None:
        """Stop fetching, give running jobs the grace period, then hand the rest back."""
        self._stopping = True
        self._room.set()
        if self._loop is not None:
            await asyncio.wait([self._loop], timeout=self.settings.agent_fetch_timeout + 2)
            self._loop.cancel()
        if self.tasks:
            grace = self.settings.agent_shutdown_grace
            log.info("stopping: waiting for running jobs", jobs=len(self.tasks), grace=grace)
            _, left = await asyncio.wait(set(self.tasks), timeout=grace)
            if left:
                log.warning("grace period over: handing jobs back", jobs=len(left))
                self.runner.stopping = True
                for task in left:
                    task.cancel()
                await asyncio.wait(left, timeout=HAND_BACK_TIMEOUT)
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error as exc:
                log.warning("could not unsubscribe the job consumer", error=repr(exc))
            self._sub = None

    async def _fetch_forever(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self._stopping:
            self._room.clear()
            free = self.settings.agent_concurrency - len(self.tasks)
            if free <= 0:
                await self._room.wait()
                continue
            try:
                batch = await sub.fetch(
                    min(free, self.settings.agent_fetch_batch),
                    timeout=self.settings.agent_fetch_timeout,
                )
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as exc:
                log.warning("fetching jobs failed; trying again", error=repr(exc))
                await asyncio.sleep(ERROR_PAUSE)
                continue
            for msg in batch:
                if self._stopping:
                    await settle(msg, retry(0.0), None)  # for another replica
                    continue
                task = asyncio.create_task(self._process(msg))
                self.tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._room.set()

    async def _process(self, msg: Msg) -> None:
        meta = RequestMeta.from_headers(msg.headers)
        with structlog.contextvars.bound_contextvars(
            request_id=meta.request_id, user_id=meta.user_id, subject=msg.subject
        ), self.observe(msg), failures_logged(CRASHED):
            verdict: Verdict = await self.runner.handle(NatsDelivery(msg))
            await settle(msg, verdict, self.dead_letters)
