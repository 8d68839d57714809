"""Readiness: whether the bus and every service the gateway needs answer a ping."""

import asyncio
import time

from contracts import subjects
from contracts.base import Ping, Pong
from services.gateway.bus import GatewayBus
from services.runtime.meta import BusError, BusTimeout, BusUnavailable, RequestMeta

READY_SERVICES = {
    "history": subjects.HISTORY_PING,
    "agent": subjects.AGENT_PING,
    "memory": subjects.MEMORY_PING,
}


def all_down(reason: str) -> dict[str, str]:
    """Name NATS and every service down, for ``reason``."""
    return {"nats": "down", **dict.fromkeys(READY_SERVICES, f"down: {reason}")}


async def readiness(bus: GatewayBus, request_id: str, timeout: float) -> dict[str, str]:
    """Ping every service the gateway needs, at once; name each one's state."""
    if not bus.connected:
        return all_down("bus unavailable")
    names = list(READY_SERVICES)
    states = await asyncio.gather(
        *(_ping(bus, READY_SERVICES[name], request_id, timeout) for name in names)
    )
    return {"nats": "ok", **dict(zip(names, states, strict=True))}


async def _ping(bus: GatewayBus, subject: str, request_id: str, timeout: float) -> str:
    meta = RequestMeta(request_id, None, time.time() + timeout)
    try:
        reply = await bus.request(subject, Ping(), Pong, meta, timeout)
    except BusUnavailable:
        return "down: no responders"
    except BusTimeout:
        return "down: timeout"
    except BusError as exc:
        return f"down: {type(exc).__name__}"
    return "ok" if reply.error is None else f"down: {reply.error.code}"
