"""Reading what the bus holds, for tests: a stream's messages by subject, polling until done."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

T = TypeVar("T")


async def stream_messages(js: JetStreamContext, stream: str, subject: str) -> list[RawStreamMsg]:
    """Return every message ``stream`` holds on ``subject`` (a filter), oldest first."""
    try:
        state = (await js.stream_info(stream)).state
    except NotFoundError:
        return []
    found: list[RawStreamMsg] = []
    if state.messages == 0:
        return found  # an empty stream reports sequence 0, which get_msg refuses
    for seq in range(state.first_seq, state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:  # deleted, or past a limit
            continue
        if matches(subject, msg.subject):
            found.append(msg)
    return found


def matches(pattern: str, subject: str) -> bool:
    """Tell whether a NATS subject matches a filter (``*`` one token, ``>`` the rest)."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


async def stream_messages_at(nats_url: str, stream: str, subject: str) -> list[RawStreamMsg]:
    """Do :func:`stream_messages` over a connection of its own."""
    nc = await nats.connect(nats_url)
    try:
        return await stream_messages(nc.jetstream(), stream, subject)
    finally:
        await nc.close()


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float
) -> T:
    """Poll ``probe`` until ``done`` holds or ``timeout`` seconds pass; return the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)
