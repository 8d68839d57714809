"""Tracing with OpenTelemetry across HTTP and NATS, and a service's whole observability kit.

With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, a service builds an SDK tracer
provider exporting spans over OTLP/HTTP (batched, in the background), puts
FastStream's telemetry middleware on its broker (it writes the trace context
into NATS headers on publish and continues it on consume), and the gateway
instruments FastAPI. Without it nothing is built and nothing is exported. The
provider is passed explicitly, never installed globally, so several services
(or tests) can live in one process. The standard ``OTEL_*`` variables of the SDK
(sampler, exporter headers, resource attributes) apply as usual; the service
name is always ``chatbus-<service>``.

:class:`Observability` bundles a service's :class:`ServiceMetrics` and
:class:`Telemetry`: the broker middlewares of both, and their start and stop.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from faststream import BaseMiddleware
from faststream._internal.context.repository import ContextRepo
from faststream._internal.types import BrokerMiddleware
from faststream.message import SourceType
from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.response import PublishType
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from contracts.base import Reply
from services.runtime.bus import BusClient
from services.runtime.config import ServiceSettings
from services.runtime.metrics import RequestMetrics, ServiceMetrics, is_hot

if TYPE_CHECKING:
    from fastapi import FastAPI

T = TypeVar("T")
_PROPAGATOR = TraceContextTextMapPropagator()
TRACER_NAME = "chatbus"


class Telemetry:
    """The tracer provider of one service, or nothing at all when tracing is off."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME) if provider is not None else None

    @classmethod
    def from_settings(cls, settings: ServiceSettings, service: str) -> "Telemetry":
        """Export spans to the configured OTLP endpoint; without one, trace nothing."""
        endpoint = settings.otel_exporter_otlp_endpoint
        if endpoint is None:
            return cls()
        # OTEL_RESOURCE_ATTRIBUTES add to these (deployment.environment, ...).
        resource = Resource.create(
            {SERVICE_NAME: f"chatbus-{service}", SERVICE_INSTANCE_ID: settings.instance}
        )
        provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    @property
    def enabled(self) -> bool:
        """Tell whether spans are recorded."""
        return self.provider is not None

    def broker_middlewares(self) -> tuple[BrokerMiddleware[Any, Any], ...]:
        """Return FastStream's telemetry middleware for the broker, or nothing."""
        if self.provider is None:
            return ()
        return (_Untraced(NatsTelemetryMiddleware(tracer_provider=self.provider)),)

    def instrument(self, app: "FastAPI") -> None:
        """Trace every HTTP request of a FastAPI app (not each body chunk)."""
        if self.provider is None:
            return
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=self.provider, exclude_spans=["receive", "send"]
        )

    def consumer_span(
        self, name: str, headers: Mapping[str, str] | None
    ) -> AbstractContextManager[object]:
        """Return a context manager running its block in a span continuing the sender's trace."""
        if self.tracer is None:
            return nullcontext()
        return self._consumer_span(self.tracer, name, headers or {})

    @staticmethod
    @contextmanager
    def _consumer_span(
        tracer: trace.Tracer, name: str, headers: Mapping[str, str]
    ) -> Iterator[trace.Span]:
        parent = _PROPAGATOR.extract(dict(headers))
        with tracer.start_as_current_span(
            name, context=parent, kind=trace.SpanKind.CONSUMER
        ) as span:
            yield span

    async def shutdown(self) -> None:
        """Export the spans still buffered and stop the exporter."""
        if self.provider is not None:
            # The last export is a blocking HTTP call: not on the event loop.
            await asyncio.to_thread(self.provider.shutdown)


class _Untraced:
    """Keep token deltas and replies out of a telemetry middleware.

    A span per token would swamp a trace; a span per reply, sent or received,
    would be named after its one-off inbox subject (the handler's span covers it).
    """

    def __init__(self, inner: BrokerMiddleware[Any, Any]) -> None:
        self.inner = inner

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware:
        return _UntracedScope(self.inner(msg, context=context), msg, context)


class _UntracedScope(BaseMiddleware):
    def __init__(self, inner: BaseMiddleware, msg: Any, context: ContextRepo) -> None:
        super().__init__(msg, context=context)
        self.inner = inner

    async def on_receive(self) -> None:
        await self.inner.on_receive()

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        return await self.inner.after_processed(exc_type, exc_val, exc_tb)

    async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: Any) -> Any:
        if msg.source_type is SourceType.RESPONSE:
            return await call_next(msg)
        return await self.inner.consume_scope(call_next, msg)

    async def publish_scope(self, call_next: Callable[[Any], Awaitable[Any]], cmd: Any) -> Any:
        if cmd.publish_type is PublishType.REPLY or is_hot(cmd.destination):
            return await call_next(cmd)
        return await self.inner.publish_scope(call_next, cmd)


class RequestObserver:
    """Metrics (when served) and a span (when tracing) per request the responder answers."""

    def __init__(self, metrics: RequestMetrics | None, telemetry: Telemetry) -> None:
        self.metrics = metrics
        self.telemetry = telemetry

    def handled(self, subject: str, size: int, seconds: float, reply: Reply | None) -> None:
        """Record one request: its body size, handling time and reply (None: it raised)."""
        if self.metrics is not None:
            self.metrics.handled(subject, size, seconds, reply)

    def span(
        self, subject: str, headers: Mapping[str, str] | None
    ) -> AbstractContextManager[object]:
        """Trace one request as FastStream names it, continuing the sender's trace."""
        return self.telemetry.consumer_span(f"{subject} process", headers)


class Observability:
    """A service's metrics and tracing, built from its settings."""

    def __init__(
        self,
        settings: ServiceSettings,
        service: str,
        *,
        metrics: ServiceMetrics | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.metrics_port = settings.metrics_port
        self.metrics = metrics if metrics is not None else ServiceMetrics(service)
        # A telemetry handed in (tests, several services in one process) is its owner's to stop.
        self._owns_telemetry = telemetry is None
        self.telemetry = (
            telemetry if telemetry is not None else Telemetry.from_settings(settings, service)
        )

    @property
    def served(self) -> bool:
        """Tell whether this process serves its metrics (``METRICS_PORT`` is set)."""
        return self.metrics_port is not None

    def broker_middlewares(self, metrics: bool = True) -> tuple[BrokerMiddleware[Any, Any], ...]:
        """Return the broker middlewares: tracing outermost, then metrics (unless not ``metrics``).

        A service whose metrics nobody can read passes ``metrics=False``: each
        middleware costs every publish and every handled message.
        """
        bus_metrics = self.metrics.broker_middlewares() if metrics else ()
        return (*self.telemetry.broker_middlewares(), *bus_metrics)

    def bus_client(self, broker: NatsBroker, timeout: float) -> BusClient:
        """Return a request client of this service: timed into its metrics, traced when on."""
        return BusClient(
            broker, timeout, timer=self.metrics.bus_requests, traced=self.telemetry.enabled
        )

    def request_observer(self) -> "RequestObserver | None":
        """Return what records requests answered by the responder; None when nobody looks."""
        if not self.served and not self.telemetry.enabled:
            return None
        return RequestObserver(self.metrics.requests() if self.served else None, self.telemetry)

    def start(self) -> None:
        """Open the metrics endpoint when ``METRICS_PORT`` is set."""
        self.metrics.start(self.metrics_port)

    async def stop(self) -> None:
        """Close the metrics endpoint and flush the spans still buffered."""
        await self.metrics.stop()
        if self._owns_telemetry:
            await self.telemetry.shutdown()

    def lifespan(
        self, inner: Callable[[T], AbstractAsyncContextManager[None]]
    ) -> Callable[[T], AbstractAsyncContextManager[None]]:
        """Wrap an ASGI lifespan: observability starts before it and stops after it."""

        @asynccontextmanager
        async def lifespan(app: T) -> AsyncIterator[None]:
            self.start()
            try:
                async with inner(app):
                    yield
            finally:
                await self.stop()

        return lifespan
