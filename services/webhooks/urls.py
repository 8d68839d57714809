"""Which endpoint URLs are allowed: http(s) only, and no private address unless allowed.

A webhook makes this service send requests where a user says: without this
check a user could make it reach the internal network (SSRF). A host name is
resolved and every address it resolves to must be public; the check is made
when the endpoint is registered and again before every attempt (DNS can change).
``WEBHOOK_ALLOW_PRIVATE=true`` lifts the address check (a local stack, tests).
"""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from services.webhooks.errors import Invalid


async def check_url(url: str, allow_private: bool) -> str:
    """Return the URL if it may be called, else raise :class:`Invalid` saying why."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Invalid(f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise Invalid("only http and https URLs are allowed")
    if not parts.hostname:
        raise Invalid("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise Invalid("credentials in the URL are not allowed; use a secret path or query")
    if allow_private:
        return url
    for address in await _addresses(parts.hostname, port or 443):
        if not address.is_global or address.is_multicast:
            raise Invalid(
                f"{parts.hostname} is a private, loopback or otherwise non-public address "
                "(set WEBHOOK_ALLOW_PRIVATE=true to allow it)"
            )
    return url


async def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise Invalid(f"{host} does not resolve: {exc}") from exc
    return [ipaddress.ip_address(info[4][0]) for info in infos]
