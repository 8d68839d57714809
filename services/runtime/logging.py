"""Structured logging: one JSON line per event, carrying the request id.

Standard-library loggers (uvicorn, FastStream, SQLAlchemy) are routed through
the same structlog formatter, so their records carry the bound context too; a
``request_id`` or ``subject`` passed as a record's ``extra`` (FastStream's log
context) counts as well. Inside a trace span a line also carries ``trace_id`` and ``span_id``.

Every error nobody else catches is logged once, with its stack trace: uncaught
exceptions of the main thread and of other threads through the interpreter's
hooks, failures of background tasks through :func:`spawn` (or
:func:`failures_logged` around work whose request id is bound inside the task).
"""

import asyncio
import logging
import sys
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import structlog
from opentelemetry import trace


def _add_trace_ids(_: Any, __: str, event: Any) -> Any:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    _add_trace_ids,
]
log = structlog.get_logger("chatbus.errors")


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Send every log record to stderr as JSON (or console lines) tagged with the service."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *_SHARED,
            structlog.processors.add_log_level,
            structlog.stdlib.ExtraAdder(allow=("request_id", "subject")),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Locals stay out of tracebacks: they can hold tokens, secrets and message content.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
            if fmt == "json"
            else _keep,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per HTTP call (the model SDK's client) or per access: each costs a render.
    for noisy in ("uvicorn.access", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    # Only in place of the interpreter's own: a hook someone else set (a test runner) stays.
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _log_uncaught
    if threading.excepthook is threading.__excepthook__:
        threading.excepthook = _log_uncaught_in_thread


def _keep(_: Any, __: str, event: Any) -> Any:
    return event


def _log_uncaught(
    kind: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    log.critical("unhandled exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    thread = args.thread.name if args.thread is not None else None
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    log.error("unhandled exception in a thread", thread=thread, exc_info=exc_info)


@contextmanager
def failures_logged(event: str, **fields: Any) -> Iterator[None]:
    """Log an exception escaping the block once, with its stack trace, and swallow it.

    For the outermost frame of work nobody awaits; cancellation passes through.
    """
    try:
        yield
    except Exception:
        log.exception(event, **fields)


def spawn(work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[None]:
    """Run ``work`` as a background task whose failure is logged at once, once."""
    return asyncio.create_task(_supervised(work, name), name=name)


async def _supervised(work: Coroutine[Any, Any, Any], name: str) -> None:
    with failures_logged("background task failed", task=name):
        await work
