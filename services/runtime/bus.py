"""Connecting to NATS and talking over it with typed contracts.

:class:`BusClient` raises the :class:`~services.runtime.meta.BusError` family
(defined without NATS, so domain modules can name them).
"""

import time
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import nats.errors
import structlog
from faststream import BaseMiddleware
from faststream.nats import NatsBroker
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from contracts import subjects
from contracts.base import Contract, Reply
from services.runtime.config import ServiceSettings
from services.runtime.meta import (
    BusError,
    BusProtocolError,
    BusTimeout,
    BusUnavailable,
    Refused,
    RequestMeta,
)

# Domain modules import these from services.runtime.meta; older imports still find them here.
__all__ = [
    "BusClient", "BusError", "BusProtocolError", "BusTimeout", "BusUnavailable", "Refused",
    "RequestMeta", "cancels_bucket", "ensure_streams", "jobs_bucket", "make_broker",
]

R = TypeVar("R", bound=Reply)
log = structlog.get_logger("chatbus.bus")


class RequestContextMiddleware(BaseMiddleware):
    """Bind the request id and user id of each consumed message to the log context."""

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        meta = RequestMeta.from_headers(getattr(msg, "headers", None))
        # FastStream logs a handler's failure after this scope ends, with its log context.
        if isinstance(log_context := self.context.get_local("log_context"), dict):
            log_context["request_id"] = meta.request_id
        with structlog.contextvars.bound_contextvars(
            request_id=meta.request_id,
            user_id=meta.user_id,
            subject=getattr(getattr(msg, "raw_message", None), "subject", None),
        ):
            return await call_next(msg)


def make_broker(
    settings: ServiceSettings, service: str, middlewares: Sequence[Any] = (), **kwargs: Any
) -> NatsBroker:
    """Build a broker that reconnects forever and logs through the service's logger.

    ``middlewares`` (metrics, tracing) wrap the request-context one.
    """
    import logging

    return NatsBroker(
        settings.nats_url,
        name=f"chatbus-{service}-{settings.instance}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=int(max(1, settings.bus_connect_timeout)),
        middlewares=(*middlewares, RequestContextMiddleware),
        logger=logging.getLogger(f"chatbus.{service}.faststream"),
        **kwargs,
    )


async def ensure_streams(
    broker: NatsBroker,
    specs: tuple[subjects.StreamSpec, ...],
    settings: ServiceSettings | None = None,
) -> None:
    """Create the streams, or bring an existing one's config up to date.

    The JOB_EVENTS stream keeps ``settings.job_events_max_age`` when settings are given.
    """
    js = broker.connection.jetstream()
    for spec in specs:
        max_age = spec.max_age_seconds
        if spec == subjects.JOB_EVENTS_STREAM and settings is not None:
            max_age = settings.job_events_max_age
        config = StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            max_age=max_age,
            duplicate_window=spec.duplicate_window_seconds,
            storage=StorageType.FILE,
        )
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                continue
            except BadRequestError:
                pass  # another replica created it between our two calls
        await js.update_stream(config)


JOB_TTL_SECONDS = 7 * 86400


async def jobs_bucket(broker: NatsBroker) -> KeyValue:
    """Return the job-state bucket, creating it on first use."""
    return await broker.key_value(
        subjects.JOBS_BUCKET, history=1, ttl=JOB_TTL_SECONDS, storage=StorageType.FILE
    )


async def cancels_bucket(broker: NatsBroker) -> KeyValue:
    """Return the bucket of cancel requests, creating it on first use."""
    return await broker.key_value(
        subjects.CANCELS_BUCKET, history=1, ttl=JOB_TTL_SECONDS, storage=StorageType.FILE
    )


class RequestTimer(Protocol):
    """Where a request's time and outcome are recorded (a histogram by subject and outcome)."""

    def labels(self, subject: str, outcome: str) -> Any: ...


class BusClient:
    """Typed request-reply over a connected broker.

    Requests go straight through nats-py (FastStream's publisher path costs a few hundred
    microseconds of CPU per request), timed into ``timer`` when given; with ``traced``
    they take FastStream's path, whose telemetry middleware carries the trace context.
    """

    def __init__(
        self,
        broker: NatsBroker,
        default_timeout: float,
        *,
        timer: RequestTimer | None = None,
        traced: bool = False,
    ) -> None:
        self.broker = broker
        self.default_timeout = default_timeout
        self.timer = timer
        self.traced = traced

    async def request(
        self,
        subject: str,
        body: Contract,
        reply_type: type[R],
        meta: RequestMeta,
        timeout: float | None = None,
    ) -> R:
        """Send ``body`` and return the validated answer, or raise a :class:`BusError`."""
        timeout = timeout if timeout is not None else meta.remaining(self.default_timeout)
        if timeout <= 0:
            raise BusTimeout(f"deadline already passed before {subject}")
        headers = meta.headers()
        headers.setdefault(subjects.HEADER_DEADLINE, f"{time.time() + timeout:.3f}")
        outcome = "error"
        started = time.perf_counter()
        try:
            if self.traced:
                answer = await self.broker.request(
                    body, subject, headers=headers, correlation_id=meta.request_id,
                    timeout=timeout,
                )
                data = answer.body
            else:
                data = (await self.broker.connection.request(
                    subject, body.model_dump_json().encode(), timeout=timeout, headers=headers
                )).data
            outcome = "ok"
        except nats.errors.NoRespondersError as exc:
            outcome = "no_responders"
            raise BusUnavailable(f"no service answers {subject}") from exc
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            outcome = "timeout"
            raise BusTimeout(f"{subject} gave no answer within {timeout:.2f}s") from exc
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                nats.errors.StaleConnectionError, nats.errors.OutboundBufferLimitError) as exc:
            raise BusUnavailable(f"bus unavailable: {exc!r}") from exc
        finally:
            if self.timer is not None and not self.traced:  # traced: the middleware times it
                self.timer.labels(subject, outcome).observe(time.perf_counter() - started)
        try:
            return reply_type.model_validate_json(data)
        except ValidationError as exc:
            raise BusProtocolError(f"bad answer on {subject}: {exc}") from exc

    async def ask(
        self,
        subject: str,
        body: Contract,
        reply_type: type[R],
        meta: RequestMeta,
        timeout: float | None = None,
    ) -> R:
        """Send ``body`` and return the answer; raise :class:`Refused` when it is an error."""
        reply = await self.request(subject, body, reply_type, meta, timeout)
        if reply.error is not None:
            raise Refused(subject, reply.error)
        return reply

    async def publish(
        self,
        subject: str,
        body: Contract,
        meta: RequestMeta,
        *,
        stream: str | None = None,
        msg_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish ``body``; with ``stream``, wait for JetStream to store it."""
        headers = meta.headers()
        if msg_id is not None:
            headers["Nats-Msg-Id"] = msg_id
        try:
            await self.broker.publish(
                body,
                subject,
                headers=headers,
                correlation_id=meta.request_id,
                stream=stream,
                timeout=timeout if timeout is not None else self.default_timeout,
            )
        except nats.errors.NoRespondersError as exc:
            raise BusUnavailable(f"no stream stores {subject}") from exc
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            raise BusTimeout(f"publish to {subject} not acknowledged in time") from exc
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                nats.errors.StaleConnectionError, nats.errors.OutboundBufferLimitError) as exc:
            raise BusUnavailable(f"bus unavailable: {exc!r}") from exc
