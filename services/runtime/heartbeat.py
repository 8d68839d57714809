"""Keep a JetStream delivery alive while its work runs: one mechanism for every service."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog

log = structlog.get_logger("chatbus.heartbeat")
Beat = Callable[[], Awaitable[None]]


@asynccontextmanager
async def beating(beat: Beat, interval: float) -> AsyncIterator[None]:
    """Call ``beat`` (``msg.in_progress``) every ``interval`` seconds while the block runs.

    A missed beat is logged and costs at worst a redelivery, which every handler
    tolerates; the loop ends by a flag as well as by cancellation, because
    nats-py can swallow a ``CancelledError`` while it flushes.
    """
    done = asyncio.Event()

    async def loop() -> None:
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                await beat()
            except Exception as exc:
                log.warning("heartbeat failed", error=repr(exc))

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        done.set()
        task.cancel()
        await asyncio.wait([task], timeout=interval + 5)
