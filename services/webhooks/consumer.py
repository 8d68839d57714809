"""Drive a durable JetStream pull consumer with nats-py: each message its own task.

FastStream's pull subscriber either runs a fetched batch together (the next pull
waits for its slowest message: a hanging receiver would hold back every other)
or over-fetches with several workers. Here a message is fetched only when a
worker is free, runs in its own task, and is settled by the verdict it returns.
"""

import asyncio
from collections.abc import Awaitable, Callable

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.runtime.settle import DeadLetters, Verdict, retry, settle

log = structlog.get_logger("chatbus.webhooks.consumer")
Handler = Callable[[Msg], Awaitable[Verdict]]
FAILED_DELAY = 5.0  # an unexpected failure is tried again after this long
MAX_BATCH = 20


class PullConsumer:
    """Fetch from one durable consumer while fewer than ``workers`` messages run."""

    def __init__(
        self, js: JetStreamContext, stream: str, durable: str, handler: Handler, *,
        workers: int, fetch_timeout: float, dead_letters: DeadLetters | None = None,
    ) -> None:
        self.js, self.stream, self.durable = js, stream, durable
        self.handler = handler
        self.fetch_timeout = fetch_timeout
        self.dead_letters = dead_letters
        self.slots = asyncio.Semaphore(workers)
        self.workers = workers
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stopping = False

    async def start(self) -> None:
        """Bind to the consumer and start fetching."""
        self._sub = await self.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        self._loop = asyncio.create_task(
            self._fetch_forever(self._sub), name=f"pull-{self.durable}"
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop fetching, let running messages finish for ``grace`` seconds, hand back the rest.

        The last fetch is let run out rather than cancelled: a cancelled fetch leaves its
        pull request open, and what the server sends to it would wait a whole ack_wait.
        """
        self._stopping = True
        if self._loop is not None:
            done, _ = await asyncio.wait({self._loop}, timeout=self.fetch_timeout + 2)
            if not done:
                self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        if self.tasks:
            _, left = await asyncio.wait(set(self.tasks), timeout=grace)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        if self._sub is not None:
            await self._hand_back(self._sub)
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error as exc:
                log.warning("could not unsubscribe", durable=self.durable, error=repr(exc))
            self._sub = None

    @staticmethod
    async def _hand_back(sub: JetStreamContext.PullSubscription) -> None:
        """Nak what reached this subscription after its last fetch, for another replica."""
        if not sub.pending_msgs:
            return
        try:
            for msg in await sub.fetch(sub.pending_msgs, timeout=0.2):
                await msg.nak()
        except (TimeoutError, nats.errors.Error):
            pass

    async def _fetch_forever(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self._stopping:
            await self.slots.acquire()
            free = 1
            while free < min(self.workers, MAX_BATCH) and not self.slots.locked():
                await self.slots.acquire()
                free += 1
            try:
                msgs = await sub.fetch(free, timeout=self.fetch_timeout)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []
            except nats.errors.Error as exc:
                log.warning("fetch failed", durable=self.durable, error=repr(exc))
                msgs = []
                await asyncio.sleep(1.0)
            for _ in range(free - len(msgs)):
                self.slots.release()
            # A fetch can return more than asked (what was queued already): those run
            # without a slot of their own.
            for index, msg in enumerate(msgs):
                task = asyncio.create_task(self._run(msg, owns_slot=index < free))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _run(self, msg: Msg, owns_slot: bool) -> None:
        try:
            try:
                verdict = await self.handler(msg)
            except Exception:
                log.exception("message handling failed; retried", durable=self.durable)
                verdict = retry(FAILED_DELAY)
            await settle(msg, verdict, self.dead_letters)
        finally:
            if owns_slot:
                self.slots.release()
