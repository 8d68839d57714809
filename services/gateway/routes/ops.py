"""Operations endpoints (no auth): liveness, readiness, metrics."""

from typing import cast

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.gateway.deps import RequestId, SettingsDep, build_service
from services.gateway.errors import retry_after
from services.gateway.service import READY_SERVICES

router = APIRouter(tags=["operations"])

_READY_EXAMPLE = {"nats": "ok", **dict.fromkeys(READY_SERVICES, "ok")}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Answer while the process runs."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=dict[str, str],
    responses={
        200: {"content": {"application/json": {"example": _READY_EXAMPLE}}},
        503: {"description": "something is down; the map names it; Retry-After is set"},
    },
)
async def readyz(request: Request, settings: SettingsDep, request_id: RequestId) -> Response:
    """Tell whether the bus and every service the gateway needs answer."""
    bus = request.app.state.bus
    if bus is None:
        states = {"nats": "down", **dict.fromkeys(READY_SERVICES, "down: bus unavailable")}
    else:
        states = await build_service(bus, settings).readiness(request_id)
    if all(state == "ok" for state in states.values()):
        return JSONResponse(states)
    return JSONResponse(states, status_code=503, headers=retry_after(request))


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Expose the gateway's metrics in Prometheus text format."""
    registry = cast(CollectorRegistry, request.app.state.metrics_registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
