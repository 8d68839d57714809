"""Wiring of the gateway: a plain FastAPI app whose lifespan connects the bus."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from prometheus_client import Histogram

from contracts.subjects import JOB_EVENTS_STREAM
from services.gateway.auth import TokenVerifier
from services.gateway.bus import GatewayBus, NatsBus
from services.gateway.config import Settings
from services.gateway.errors import PROBLEM_JSON, install_error_handlers
from services.gateway.middleware import RequestContextMiddleware
from services.gateway.routes import (
    docs,
    history,
    jobs,
    memories,
    messages,
    ops,
    sessions,
    tools,
    web,
    webhooks,
)
from services.runtime.bus import cancels_bucket, ensure_streams, jobs_bucket, make_broker
from services.runtime.telemetry import Observability, Telemetry

log = structlog.get_logger("chatbus.gateway")


def create_app(
    settings: Settings, bus: GatewayBus | None = None, telemetry: Telemetry | None = None
) -> FastAPI:
    """Build the gateway; without ``bus``, its lifespan connects to NATS."""
    observability = Observability(settings, "gateway", telemetry=telemetry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _warn_about_secret(settings)
        if bus is not None:
            yield
            return
        broker = make_broker(settings, "gateway", observability.broker_middlewares())
        await broker.start()
        try:
            await ensure_streams(broker, (JOB_EVENTS_STREAM,), settings)
            app.state.bus = NatsBus(
                broker,
                await jobs_bucket(broker),
                await cancels_bucket(broker),
                settings.bus_request_timeout,
                observability.bus_client(broker, settings.bus_request_timeout),
            )
            log.info("gateway connected", nats_url=settings.nats_url)
            yield
        finally:
            app.state.bus = None
            await broker.stop()

    app = FastAPI(
        title="chatbus gateway",
        version="0.1.0",
        description="REST API of chatbus. Errors are application/problem+json (RFC 9457).",
        lifespan=observability.lifespan(lifespan),
    )
    registry = observability.metrics.registry
    latency = Histogram(
        "chatbus_gateway_http_request_duration_seconds",
        "Time to answer an HTTP request, by route template and status.",
        ["method", "route", "status"],
        registry=registry,
    )
    app.state.settings = settings
    app.state.bus = bus
    app.state.verifier = TokenVerifier.from_settings(settings)
    app.state.metrics_registry = registry
    install_error_handlers(app)
    observability.telemetry.instrument(app)
    app.add_middleware(
        RequestContextMiddleware, latency=latency, max_body_bytes=settings.max_body_bytes
    )
    for module in (sessions, messages, jobs, history, memories, tools, webhooks, ops, docs, web):
        app.include_router(module.router)
    web.install(app)
    _document_problems_as_problem_json(app)
    return app


def _document_problems_as_problem_json(app: FastAPI) -> None:
    """Serve error schemas under application/problem+json, the type they are sent with."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            for path in spec.get("paths", {}).values():
                for operation in path.values():
                    for answer in operation.get("responses", {}).values():
                        content = answer.get("content", {})
                        if PROBLEM_JSON in content and "application/json" in content:
                            content[PROBLEM_JSON] = content.pop("application/json")
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _warn_about_secret(settings: Settings) -> None:
    if settings.hs256_secret is None:
        log.info("HS256 tokens are refused: only keys of JWT_JWKS_URL verify tokens")
    elif settings.uses_default_secret:
        log.warning("JWT_SECRET is the published development default: set your own")
    elif len(settings.hs256_secret.encode()) < 32:
        log.warning("JWT_SECRET is shorter than 32 bytes: HS256 wants a longer one")
