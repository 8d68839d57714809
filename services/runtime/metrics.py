"""Prometheus metrics: one registry per service, the bus middlewares that fill it, its endpoint.

Every service builds one :class:`ServiceMetrics` in its ``create_app`` and hands
:meth:`ServiceMetrics.broker_middlewares` to its broker. That gives, per service:

- FastStream's own metrics under the ``chatbus_`` prefix: messages received and
  processed per handler subject and status, handler latency
  (``chatbus_received_processed_messages_duration_seconds``), messages in
  process, published messages per subject;
- ``chatbus_bus_request_duration_seconds{subject,outcome}``: request-reply
  latency as the caller sees it; outcome ``ok``, ``timeout``, ``no_responders``
  or ``error``;
- ``chatbus_bus_error_replies_total{subject,code}``: requests this service
  answered with an error reply;
- ``chatbus_dead_letters_total{subject}``: messages this service dead-lettered,
  by the subject they arrived on.

Token deltas (``chat.delta.<job>``) stay out of the per-message middlewares: one
label value per job would grow without bound, and a hook per token costs CPU.
"""

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any
from wsgiref.simple_server import WSGIServer

import nats.errors
from faststream import BaseMiddleware
from faststream._internal.context.repository import ContextRepo
from faststream._internal.types import BrokerMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from faststream.prometheus.container import MetricsContainer
from faststream.response import PublishType
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from contracts import subjects
from contracts.base import Reply
from contracts.deadletter import DeadLetter

# Job events published once per token (``chat.job.<id>.delta``): no per-message middleware
# work on them.
JOB_PREFIX = f"{subjects.CHAT_JOB_PREFIX}."
HOT_SUFFIX = ".delta"
DEADLETTER_PREFIX = f"{subjects.DEADLETTER_PREFIX}."
BUS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


def is_hot(subject: str) -> bool:
    """Tell whether a subject carries one message per token (kept out of middlewares)."""
    return subject.startswith(JOB_PREFIX) and subject.endswith(HOT_SUFFIX)


class ServiceMetrics:
    """The registry of one service and the bus metrics every service fills."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        self.bus_requests = Histogram(
            "chatbus_bus_request_duration_seconds",
            "Time from sending a NATS request to its answer, by subject and outcome.",
            ["subject", "outcome"],
            buckets=BUS_BUCKETS,
            registry=self.registry,
        )
        self.error_replies = Counter(
            "chatbus_bus_error_replies",
            "Requests this service answered with an error reply, by subject and error code.",
            ["subject", "code"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "chatbus_dead_letters",
            "Messages this service dead-lettered, by the subject they arrived on.",
            ["subject"],
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def broker_middlewares(self) -> tuple[BrokerMiddleware[Any, Any], ...]:
        """Return the FastStream middlewares that fill this registry."""
        faststream_metrics = NatsPrometheusMiddleware(
            registry=self.registry, app_name=self.service, metrics_prefix="chatbus"
        )
        return (_BusMetrics(self, faststream_metrics),)

    def requests(self) -> "RequestMetrics":
        """Return the recorder of requests answered outside FastStream (the responder)."""
        return RequestMetrics(self)

    def llm(self, model: str) -> "LLMMetrics":
        """Register the model-call metrics (services that call an LLM)."""
        return LLMMetrics(self.registry, model)

    def start(self, port: int | None) -> None:
        """Serve this registry over HTTP on ``port`` (all interfaces); nothing when None."""
        if port is None or self._server is not None:
            return
        self._server, self._thread = start_http_server(port, registry=self.registry)

    async def stop(self) -> None:
        """Stop the HTTP endpoint, if one runs."""
        server, self._server = self._server, None
        if server is None:
            return
        # shutdown() waits for the serving loop to notice: not on the event loop.
        await asyncio.to_thread(server.shutdown)
        server.server_close()

    @property
    def port(self) -> int | None:
        """Return the port the endpoint listens on, or None."""
        return None if self._server is None else int(self._server.server_address[1])


class RequestMetrics:
    """Requests answered by ``services.runtime.responder``, under FastStream's metric names.

    FastStream's container hands back the metrics already in the registry, so these
    are the very series its middleware fills for the subscribers it runs.
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.service = metrics.service
        self.error_replies = metrics.error_replies
        self.container = MetricsContainer(
            metrics.registry, metrics_prefix="chatbus", custom_label_names=()
        )

    def handled(self, subject: str, size: int, seconds: float, reply: Reply | None) -> None:
        """Record one request: its body size, handling time and reply (None: it raised)."""
        labels = (self.service, "nats", subject)
        container = self.container
        container.received_messages_total.labels(*labels).inc()
        container.received_messages_size_bytes.labels(*labels).observe(size)
        container.received_processed_messages_duration_seconds.labels(*labels).observe(seconds)
        status = "acked" if reply is not None else "error"
        container.received_processed_messages_total.labels(*labels, status).inc()
        if reply is not None and reply.error is not None:
            self.error_replies.labels(subject, reply.error.code).inc()


class LLMMetrics:
    """Latency and token use of model calls (agent and memory)."""

    def __init__(self, registry: CollectorRegistry, model: str) -> None:
        self.model = model
        self.first_token = Histogram(
            "chatbus_llm_time_to_first_token_seconds",
            "Time from sending a model call to the first streamed piece (whole answer if not "
            "streamed).",
            ["model"],
            buckets=LLM_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "chatbus_llm_call_duration_seconds",
            "Time of a whole model call, by outcome (ok, error, cancelled).",
            ["model", "outcome"],
            buckets=LLM_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "chatbus_llm_tokens",
            "Tokens the model reported using, by kind (prompt, completion).",
            ["model", "kind"],
            registry=registry,
        )
        self._first = self.first_token.labels(model)
        self._prompt = self.tokens.labels(model, "prompt")
        self._completion = self.tokens.labels(model, "completion")

    def observe_first_token(self, seconds: float) -> None:
        """Record the wait for the first piece of an answer."""
        self._first.observe(seconds)

    def observe_call(self, seconds: float, outcome: str) -> None:
        """Record a finished call."""
        self.duration.labels(self.model, outcome).observe(seconds)

    def record_usage(self, usage: Any) -> None:
        """Count the tokens of a usage report: the SDK's object, its JSON, or None (none sent)."""
        if usage is None:
            return
        read = usage.get if isinstance(usage, Mapping) else partial(getattr, usage)
        prompt, completion = read("prompt_tokens", 0), read("completion_tokens", 0)
        if isinstance(prompt, int) and prompt > 0:
            self._prompt.inc(prompt)
        if isinstance(completion, int) and completion > 0:
            self._completion.inc(completion)

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Time a call that is not streamed: its first token is its whole answer."""
        started = time.perf_counter()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            seconds = time.perf_counter() - started
            if outcome == "ok":
                self.observe_first_token(seconds)
            self.observe_call(seconds, outcome)


class _BusMetrics:
    """Broker middleware: FastStream's metrics plus request, error-reply and dead-letter ones.

    One middleware for both, as every layer costs each publish a few microseconds.
    """

    def __init__(self, metrics: ServiceMetrics, faststream: BrokerMiddleware[Any, Any]) -> None:
        self.metrics = metrics
        self.faststream = faststream
        self._publishing: _BusMetricsScope | None = None

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware:
        if msg is not None:
            return _BusMetricsScope(msg, context=context, owner=self)
        # A publish outside a handler keeps no state in its scope: one serves them all.
        scope = self._publishing
        if scope is None or scope.context is not context:
            scope = self._publishing = _BusMetricsScope(None, context=context, owner=self)
        return scope


class _BusMetricsScope(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: ContextRepo, owner: _BusMetrics) -> None:
        super().__init__(msg, context=context)
        self.owner = owner

    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: Any) -> Any:
        inner = self.owner.faststream(self.msg, context=self.context)
        return await inner.consume_scope(partial(self._answer, call_next), msg)

    async def _answer(self, call_next: Callable[[Any], Awaitable[Any]], msg: Any) -> Any:
        result = await call_next(msg)
        # A handler's own answer (a response to our request is a message, not a Reply).
        if isinstance(result, Reply) and result.error is not None:
            subject = getattr(msg.raw_message, "subject", "")
            self.owner.metrics.error_replies.labels(subject, result.error.code).inc()
        return result

    async def publish_scope(self, call_next: Callable[[Any], Awaitable[Any]], cmd: Any) -> Any:
        destination: str = cmd.destination
        if is_hot(destination):
            return await call_next(cmd)
        inner = self.owner.faststream(self.msg, context=self.context)
        if cmd.publish_type is PublishType.REQUEST:
            return await inner.publish_scope(partial(self._request, call_next), cmd)
        result = await inner.publish_scope(call_next, cmd)
        if destination.startswith(DEADLETTER_PREFIX):
            body = cmd.body
            dead = body.subject if isinstance(body, DeadLetter) else destination
            self.owner.metrics.dead_letters.labels(dead).inc()
        return result

    async def _request(self, call_next: Callable[[Any], Awaitable[Any]], cmd: Any) -> Any:
        outcome = "error"
        started = time.perf_counter()
        try:
            result = await call_next(cmd)
            outcome = "ok"
            return result
        except nats.errors.NoRespondersError:
            outcome = "no_responders"
            raise
        except (TimeoutError, nats.errors.TimeoutError):
            outcome = "timeout"
            raise
        finally:
            self.owner.metrics.bus_requests.labels(cmd.destination, outcome).observe(
                time.perf_counter() - started
            )
