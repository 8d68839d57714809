"""Run a service's main coroutine on uvloop when it is installed, else on asyncio's loop.

uvloop (a dependency of ``uvicorn[standard]`` on CPython outside Windows) runs
the same code with a fraction of the event loop's CPU per wake-up, which the
fast request-reply services spend on every request.
"""

import asyncio
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` until it returns, on the fastest event loop available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is absent on some platforms
        asyncio.run(main)
        return
    uvloop.run(main)
