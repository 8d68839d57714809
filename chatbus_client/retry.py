"""When to try a call again: after a 429 or a 503, as long as the server says, a few times."""

from dataclasses import dataclass

import httpx

from chatbus_client.errors import ChatbusError, ConnectionFailed, RateLimited, Unavailable

DEFAULT_WAIT = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """Retry 429 and 503 answers up to ``max_retries`` times, waiting their ``Retry-After``.

    A ``Retry-After`` longer than ``max_wait`` is not waited out: the error is raised, so a
    caller is never blocked for minutes without knowing why.
    """

    max_retries: int = 3
    max_wait: float = 30.0

    def delay(self, error: ChatbusError, retries_done: int) -> float | None:
        """Return the seconds to wait before the next try, or None to raise ``error``."""
        if not isinstance(error, RateLimited | Unavailable) or retries_done >= self.max_retries:
            return None
        wait = DEFAULT_WAIT if error.retry_after is None else error.retry_after
        return wait if wait <= self.max_wait else None


def unreachable(base_url: str, exc: httpx.TransportError) -> ConnectionFailed:
    """Describe a call that got no HTTP answer."""
    return ConnectionFailed(f"no answer from {base_url}: {exc!r}", title="Connection failed")


# Reads wait past the server's 15 s keep-alive pings; a silent minute means a dead stream.
STREAM_TIMEOUT = httpx.Timeout(10.0, read=45.0)
