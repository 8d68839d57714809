"""How a JetStream delivery ends: the verdict a handler returns, applied in one place.

::

    ACK     done, or nothing left to do: never delivered again
    RETRY   nak with a delay: delivered again later (the delivery count grows)
    DROP    term: never delivered again; with ``dead_letter`` the message is parked
            in the DEADLETTER stream first, with that reason
"""

from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import structlog

log = structlog.get_logger("chatbus.settle")


class Settle(Enum):
    """What to tell JetStream about a delivered message."""

    ACK = "ack"
    RETRY = "retry"
    DROP = "drop"


@dataclass(frozen=True)
class Verdict:
    """How to settle one delivery, and why."""

    settle: Settle
    delay: float = 0.0
    dead_letter: str | None = None  # DROP only: park the message with this reason


ACK = Verdict(Settle.ACK)
DROP = Verdict(Settle.DROP)


def retry(delay: float) -> Verdict:
    """Return a verdict that redelivers after ``delay`` seconds."""
    return Verdict(Settle.RETRY, delay)


def give_up(reason: str) -> Verdict:
    """Return a verdict that dead-letters the message with ``reason`` and drops it."""
    return Verdict(Settle.DROP, dead_letter=reason)


class Settleable(Protocol):
    """A nats-py JetStream message (``nats.aio.msg.Msg``)."""

    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...
    async def term(self) -> None: ...


class DeadLetters(Protocol):
    """Where given-up messages are parked (``services.runtime.deadletter``)."""

    async def publish(self, msg: Any, reason: str) -> None: ...


async def settle(msg: Settleable, verdict: Verdict, dead_letters: DeadLetters | None) -> None:
    """Apply ``verdict`` to ``msg``; a failure only logs (the server redelivers it later)."""
    try:
        if verdict.settle is Settle.ACK:
            await msg.ack()
        elif verdict.settle is Settle.RETRY:
            await msg.nak(delay=verdict.delay or None)
        else:
            if verdict.dead_letter is not None and dead_letters is not None:
                await dead_letters.publish(msg, verdict.dead_letter)
            await msg.term()
    except Exception as exc:
        # Unsettled, the message is redelivered after its ack deadline.
        log.warning("could not settle a message", settle=verdict.settle.value, error=repr(exc))
