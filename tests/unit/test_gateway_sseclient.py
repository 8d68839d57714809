"""An SSE client for the gateway's tests that reads events as the app sends them.

Holds no tests of its own; the gateway's unit and integration tests import it.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event as a client parses it."""

    event: str | None
    id: str | None
    data: str

    def json(self) -> Any:
        """Decode the data as JSON."""
        return json.loads(self.data)


class SseClient:
    """Call an ASGI app directly and read its server-sent events as they are sent.

    httpx's ASGI transport hands back a response only once the app has finished,
    so a test could not act between two events of a live stream through it.
    """

    def __init__(self, app: FastAPI, path: str, headers: dict[str, str]) -> None:
        self.app = app
        self.path = path
        self.headers = headers
        self.status = 0
        self.response_headers: dict[str, str] = {}
        self.body = b""
        self._messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._disconnect = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._buffer = b""
        self._ended = False

    async def start(self, timeout: float = 10.0) -> "SseClient":
        """Send the request and wait for the response headers."""
        path, _, query = self.path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in self.headers.items()],
            "client": ("127.0.0.1", 1),
            "server": ("gateway", 80),
        }
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self._disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await self._messages.put(message)

        self._task = asyncio.create_task(self.app(scope, receive, send))  # type: ignore[arg-type]
        start = await asyncio.wait_for(self._messages.get(), timeout)
        assert start["type"] == "http.response.start"
        self.status = start["status"]
        self.response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
        if self.status != 200:
            while not self._ended:
                await self._read(timeout)
            self.body = self._buffer
        return self

    async def next(self, timeout: float = 10.0) -> SseEvent | None:
        """Return the next event, or None once the stream has ended."""
        while True:
            block, sep, rest = self._buffer.partition(b"\n\n")
            if sep:
                self._buffer = rest
                event = _parse_sse(block.decode())
                if event is not None:
                    return event
                continue
            if self._ended:
                return None
            await self._read(timeout)

    async def rest(self, timeout: float = 10.0) -> list[SseEvent]:
        """Return every event until the stream ends."""
        events = []
        while (event := await self.next(timeout)) is not None:
            events.append(event)
        return events

    async def close(self, timeout: float = 10.0) -> None:
        """Disconnect, as a client going away, and wait for the app to finish."""
        self._disconnect.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout)

    async def _read(self, timeout: float) -> None:
        message = await asyncio.wait_for(self._messages.get(), timeout)
        self._buffer += message.get("body", b"")
        if not message.get("more_body", False):
            self._ended = True


def _parse_sse(block: str) -> SseEvent | None:
    fields: dict[str, list[str]] = {}
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue  # comments are keep-alives
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))
    if not fields:
        return None
    return SseEvent(
        event=fields.get("event", [None])[-1],
        id=fields.get("id", [None])[-1],
        data="\n".join(fields.get("data", [])),
    )


@asynccontextmanager
async def sse(app: FastAPI, path: str, headers: dict[str, str]) -> AsyncIterator[SseClient]:
    """Open an event stream on ``app``; disconnect on exit."""
    client = await SseClient(app, path, headers).start()
    try:
        yield client
    finally:
        await client.close()
