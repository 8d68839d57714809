"""Operations endpoints (no auth): liveness, readiness, metrics."""

from typing import cast

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.gateway.deps import RequestId, SettingsDep
from services.gateway.errors import retry_after
from services.gateway.readiness import READY_SERVICES, all_down, readiness

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
        states = all_down("bus unavailable")
    else:
        states = await readiness(bus, request_id, settings.ready_timeout)
    if all(state == "ok" for state in states.values()):
        return JSONResponse(states)
    return JSONResponse(states, status_code=503, headers=retry_after(request))


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Expose the gateway's metrics in Prometheus text format."""
    registry = cast(CollectorRegistry, request.app.state.metrics_registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
