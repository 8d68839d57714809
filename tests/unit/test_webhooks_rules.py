"""The webhooks service's rules without servers: URLs allowed, what is retried, the backoff."""

import uuid

import httpx
import pytest

from services.webhooks.config import Settings
from services.webhooks.errors import Invalid
from services.webhooks.sender import Outcome, _retry_after
from services.webhooks.service import WebhookService, message_id, new_secret
from services.webhooks.urls import check_url


@pytest.mark.parametrize(
    "url",
    ["https://93.184.215.14/hook", "http://8.8.8.8:8080/x?y=1", "https://[2606:4700::1111]/h"],
)
async def test_public_http_urls_are_allowed(url: str) -> None:
    assert await check_url(url, allow_private=False) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://8.8.8.8/x", "only http and https"),
        ("https://user:pw@8.8.8.8/x", "credentials"),
        ("http:///path", "no host"),
        ("http://192.168.1.10/x", "WEBHOOK_ALLOW_PRIVATE"),
        ("http://172.16.0.1/x", "WEBHOOK_ALLOW_PRIVATE"),
        ("http://100.64.0.1/x", "WEBHOOK_ALLOW_PRIVATE"),  # carrier-grade NAT
        ("http://[fd00::1]/x", "WEBHOOK_ALLOW_PRIVATE"),
        ("http://0.0.0.0/x", "WEBHOOK_ALLOW_PRIVATE"),
        ("http://224.0.0.1/x", "WEBHOOK_ALLOW_PRIVATE"),
        ("http://127.0.0.1:99999/x", "not a valid URL"),
    ],
)
async def test_other_urls_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(Invalid, match=why):
        await check_url(url, allow_private=False)


async def test_private_urls_pass_when_allowed() -> None:
    assert await check_url("http://127.0.0.1:8080/h", allow_private=True)


def test_timeouts_5xx_and_429_are_retried_other_answers_are_not() -> None:
    assert Outcome(None, "timed out", 10).retryable
    assert Outcome(503, "HTTP 503", 10).retryable and Outcome(429, "HTTP 429", 1).retryable
    assert not Outcome(404, "HTTP 404", 1).retryable
    assert not Outcome(301, "HTTP 301", 1).retryable
    assert not Outcome(None, "refused: private", 0, refused=True).retryable
    assert Outcome(204, None, 1).delivered and not Outcome(204, None, 1).retryable


def test_the_backoff_doubles_with_jitter_up_to_the_cap_and_honours_retry_after() -> None:
    settings = Settings(webhook_retry_initial=5, webhook_retry_max=60)
    service = WebhookService(settings, store=None, sender=None, queue=None)  # type: ignore[arg-type]
    for attempt, base in ((1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (9, 60)):
        delay = service.backoff(attempt, None)
        assert 0.8 * base <= delay <= 1.2 * base
    assert service.backoff(1, 30) == 30 and service.backoff(1, 10_000) == 60
    assert _retry_after(httpx.Headers({"retry-after": "7"})) == 7.0
    in_the_past = httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert _retry_after(in_the_past) == 0.0
    assert _retry_after(httpx.Headers({"retry-after": "soon"})) is None


def test_secrets_are_standard_and_message_ids_stable() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and secret != new_secret()
    endpoint = uuid.uuid4()
    assert message_id(endpoint, "job.completed:1") == message_id(endpoint, "job.completed:1")
    assert message_id(endpoint, "job.completed:1") != message_id(endpoint, "job.completed:2")
