"""A real local HTTP receiver of webhooks for tests: each path answers as a test wants.

- ``/ok``: 200;
- ``/flaky``: 500 twice (per ``webhook-id``), then 200;
- ``/gone``: 410;
- ``/busy``: 429 with ``Retry-After: 1`` the first time (per ``webhook-id``), then 200;
- ``/hang``: answers after 60 s (longer than any delivery timeout).

Every request is recorded (path, headers, body, time, status answered).
"""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request, Response

from services.launcher.natsserver import free_port


@dataclass(frozen=True)
class Received:
    """One request the receiver got, and what it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int


@dataclass
class Receiver:
    """The receiver's record and its base URL."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    tries: Counter[tuple[str, str]] = field(default_factory=Counter)

    def at(self, path: str) -> list[Received]:
        """Return what reached one path, oldest first."""
        return [r for r in self.received if r.path == path]

    def accepted(self, path: str) -> list[Received]:
        """Return the requests of a path answered 2xx."""
        return [r for r in self.at(path) if 200 <= r.status < 300]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{path}")
        async def receive(path: str, request: Request) -> Response:
            body = await request.body()
            key = (path, request.headers.get("webhook-id", ""))
            self.tries[key] += 1
            status, headers = 200, {}
            if path == "flaky" and self.tries[key] <= 2:
                status = 500
            elif path == "gone":
                status = 410
            elif path == "busy" and self.tries[key] == 1:
                status, headers = 429, {"Retry-After": "1"}
            elif path == "hang":
                await asyncio.sleep(60)
            self.received.append(
                Received(f"/{path}", dict(request.headers), body, time.monotonic(), status)
            )
            return Response(status_code=status, headers=headers)

        return app


@asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    """Serve a :class:`Receiver` on a free local port until the block ends."""
    receiver = Receiver()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        receiver.app(), host="127.0.0.1", port=port, log_config=None, lifespan="off",
        timeout_graceful_shutdown=1,
    ))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    receiver.url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.should_exit = True
        server.force_exit = True
        await asyncio.wait({task}, timeout=5)
        task.cancel()
