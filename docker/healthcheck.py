"""Tell Docker whether the chatbus service of this container answers: exit 0, or 1 and why.

The service is ``$CHATBUS_SERVICE`` (the one the image's command runs, or the first
argument): the gateway must be ready (``/readyz``: NATS and every service it needs
answer), the simulated model must serve ``/v1/models``, and history, memory, the
agent and webhooks must answer a ping over NATS. A ping goes to the service's queue group, so any
replica of it may answer: the check says the service answers on the bus, and that the
bus is reachable from this container.
"""

import asyncio
import os
import sys
import urllib.error
import urllib.request

import nats
from nats.errors import Error as NatsError

from contracts import subjects
from contracts.base import Ping, Pong

TIMEOUT = 3.0
PINGS = {
    "history": subjects.HISTORY_PING,
    "memory": subjects.MEMORY_PING,
    "agent": subjects.AGENT_PING,
    "webhooks": subjects.WEBHOOKS_PING,
}
PAGES = {
    "gateway": ("GATEWAY_PORT", "8000", "/readyz"),
    "simllm": ("SIMLLM_PORT", "8090", "/v1/models"),
}


def check_page(service: str) -> str | None:
    """GET the service's page on this container; None when it answers 200."""
    variable, default, path = PAGES[service]
    url = f"http://127.0.0.1:{os.environ.get(variable, default)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}: {exc.read(500).decode(errors='replace')}"
    except OSError as exc:
        return f"{url}: {exc}"
    return None


async def check_ping(service: str) -> str | None:
    """Ping the service over NATS; None when a replica answers without error."""
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    try:
        nc = await nats.connect(
            url, connect_timeout=TIMEOUT, allow_reconnect=False, max_reconnect_attempts=0
        )
    except (OSError, NatsError, TimeoutError) as exc:
        return f"NATS at {url}: {exc!r}"
    try:
        msg = await nc.request(PINGS[service], Ping().model_dump_json().encode(), timeout=TIMEOUT)
        pong = Pong.model_validate_json(msg.data)
    except (NatsError, TimeoutError, ValueError) as exc:
        return f"{service} did not answer a ping: {exc!r}"
    finally:
        await nc.close()
    return None if pong.error is None else f"{service} answered {pong.error.code}"


def main() -> int:
    """Check the service named by the argument or ``$CHATBUS_SERVICE``."""
    service = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CHATBUS_SERVICE", "")
    if service in PAGES:
        problem = check_page(service)
    elif service in PINGS:
        problem = asyncio.run(check_ping(service))
    else:
        problem = f"no health check for service {service!r}"
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print(f"{service}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
