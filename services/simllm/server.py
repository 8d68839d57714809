"""Serve the simulated model inside a running event loop (tests, embedding)."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from services.simllm.app import create_app
from services.simllm.config import Settings


@asynccontextmanager
async def running(settings: Settings, start_timeout: float = 10.0) -> AsyncIterator[str]:
    """Serve on the configured host and port; yield the OpenAI base URL until exit."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.simllm_host,
        port=settings.simllm_port,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(start_timeout):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the simulated model server stopped while starting")
                await asyncio.sleep(0.02)
        yield f"http://{settings.simllm_host}:{settings.simllm_port}/v1"
    finally:
        server.should_exit = True
        await task
