"""A job's event stream that reconnects by itself after the last event it received.

The loop, for both clients: open ``GET /api/jobs/{id}/events`` (with
``Last-Event-ID`` once an event came), yield each event, stop after the final
one; on a dropped connection, a stream that ends early, a 429, 503, 502 or 504,
wait (``Retry-After`` when given, else a growing backoff) and open it again, at
most ``max_reconnects`` times in a row without an event in between.
"""

import asyncio
import time
from collections.abc import AsyncGenerator, Generator
from contextlib import AsyncExitStack, ExitStack

import httpx

from chatbus_client.calls import Id, events_path
from chatbus_client.errors import ChatbusError, error_from
from chatbus_client.events import JobEvent, parse_event
from chatbus_client.retry import STREAM_TIMEOUT
from chatbus_client.sse import Resumption, SseParser, stream_ended


def follow(
    http: httpx.Client, job_id: Id, resume: Resumption
) -> Generator[JobEvent, None, None]:
    """Yield the job's events to the final one over ``http``, reconnecting as needed."""
    while True:
        problem: Exception
        with ExitStack() as stack:
            try:
                response = stack.enter_context(
                    http.stream(
                        "GET", events_path(job_id), headers=resume.headers(), timeout=STREAM_TIMEOUT
                    )
                )
                if not response.is_success:
                    response.read()
                    raise error_from(response)
            except (httpx.TransportError, ChatbusError) as exc:
                problem = exc
            else:
                try:
                    parser = SseParser()
                    for line in response.iter_lines():
                        if (raw := parser.feed(line)) is None:
                            continue
                        event = parse_event(raw.name, raw.data, raw.id)
                        resume.seen(raw.id)
                        yield event
                        if event.final:
                            return
                    problem = stream_ended()
                except httpx.TransportError as exc:
                    problem = exc
        time.sleep(resume.delay(problem))


async def follow_async(
    http: httpx.AsyncClient, job_id: Id, resume: Resumption
) -> AsyncGenerator[JobEvent, None]:
    """Yield the job's events to the final one over ``http``, reconnecting as needed."""
    while True:
        problem: Exception
        async with AsyncExitStack() as stack:
            try:
                response = await stack.enter_async_context(
                    http.stream(
                        "GET", events_path(job_id), headers=resume.headers(), timeout=STREAM_TIMEOUT
                    )
                )
                if not response.is_success:
                    await response.aread()
                    raise error_from(response)
            except (httpx.TransportError, ChatbusError) as exc:
                problem = exc
            else:
                try:
                    parser = SseParser()
                    async for line in response.aiter_lines():
                        if (raw := parser.feed(line)) is None:
                            continue
                        event = parse_event(raw.name, raw.data, raw.id)
                        resume.seen(raw.id)
                        yield event
                        if event.final:
                            return
                    problem = stream_ended()
                except httpx.TransportError as exc:
                    problem = exc
        await asyncio.sleep(resume.delay(problem))
