"""One attempt at a delivery: sign the body (Standard Webhooks), POST it, read the answer.

Headers: ``webhook-id`` (the same for every attempt and resend of one event to one
endpoint, so receivers can drop duplicates), ``webhook-timestamp`` (this attempt,
Unix seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">`` with the endpoint's secret, by the ``standardwebhooks``
library). Redirects are not followed.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from standardwebhooks import Webhook

USER_AGENT = "chatbus-webhooks/1"
ERROR_CHARS = 500


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: a status code, or an error when there was no answer."""

    status_code: int | None
    error: str | None
    duration_ms: int
    retry_after: float | None = None
    refused: bool = False  # not sent: the URL is no longer allowed

    @property
    def delivered(self) -> bool:
        """Tell whether the receiver accepted the delivery (2xx)."""
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        """Tell whether another attempt may succeed: no answer (a timeout), 5xx or 429."""
        code = self.status_code
        return not self.refused and (code is None or code >= 500 or code == 429)


class Sender:
    """POST signed bodies to endpoints with one shared HTTP client."""

    def __init__(self, timeout: float, client: httpx.AsyncClient | None = None) -> None:
        self.client = client or httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
        )

    async def send(self, url: str, secret: str, message_id: str, body: str) -> Outcome:
        """Make one attempt; never raise for what the receiver or the network did."""
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(message_id, now, body),
        }
        started = time.monotonic()
        try:
            response = await self.client.post(url, content=body.encode(), headers=headers)
        except httpx.TimeoutException:
            return Outcome(None, "timed out", _ms(started))
        except httpx.HTTPError as exc:
            return Outcome(None, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS], _ms(started))
        error = None if 200 <= response.status_code < 300 else _excerpt(response)
        return Outcome(
            response.status_code, error, _ms(started), _retry_after(response.headers)
        )

    async def close(self) -> None:
        """Close the HTTP client's connections."""
        await self.client.aclose()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _excerpt(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return (f"HTTP {response.status_code}" + (f": {text}" if text else ""))[:ERROR_CHARS]


def _retry_after(headers: httpx.Headers) -> float | None:
    """Read ``Retry-After``: seconds, or an HTTP date."""
    value = headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
