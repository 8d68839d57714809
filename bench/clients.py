"""Many HTTP calls at once from one benchmark process, without measuring the client itself.

One ``httpx.AsyncClient`` holding hundreds of connections scans its whole pool on
every request and every response: 500 calls at once cost its process about 5 s of
CPU on a 2-core machine, while the server answers them in 0.1 s (measured with a
trivial app: bench/README.md). Spreading the calls round-robin over clients of a
few dozen connections each keeps the load generator out of the figures.
"""

import itertools
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx

SHARDS = 25


class Clients:
    """Round-robin ``get``/``post`` over several ``httpx.AsyncClient`` of one base URL."""

    def __init__(self, make: Callable[[], httpx.AsyncClient], shards: int = SHARDS) -> None:
        self.clients = [make() for _ in range(shards)]
        self._turn = itertools.cycle(self.clients)

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """Send a GET on the next client."""
        return await next(self._turn).get(url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        """Send a POST on the next client."""
        return await next(self._turn).post(url, **kwargs)

    async def aclose(self) -> None:
        """Close every client."""
        for client in self.clients:
            await client.aclose()

    async def __aenter__(self) -> "Clients":
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
