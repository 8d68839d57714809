"""Dependencies of the routes, as ``Annotated`` aliases."""

from typing import Annotated, cast

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from services.gateway.auth import InvalidToken, KeysUnavailable, TokenVerifier, User
from services.gateway.bus import GatewayBus
from services.gateway.config import Settings
from services.gateway.errors import Unauthorized, request_id_of
from services.gateway.service import Caller, GatewayService
from services.runtime.meta import BusUnavailable

bearer = HTTPBearer(
    auto_error=False,
    description="JWT, HS256 with the secret or RS256/ES256 with a JWKS key; `sub` is the user id",
)


async def get_settings(request: Request) -> Settings:
    """Return the settings the app was built with."""
    return cast(Settings, request.app.state.settings)


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_bus(request: Request) -> GatewayBus:
    """Return the bus, or refuse while the gateway is not connected."""
    bus = cast(GatewayBus | None, request.app.state.bus)
    if bus is None:
        raise BusUnavailable("the gateway is not connected to the bus")
    return bus


BusDep = Annotated[GatewayBus, Depends(get_bus)]


async def get_request_id(request: Request) -> str:
    """Return the id of the current request."""
    return request_id_of(request)


RequestId = Annotated[str, Depends(get_request_id)]


def build_service(bus: GatewayBus, settings: Settings) -> GatewayService:
    """Build the service over a bus."""
    return GatewayService(
        bus,
        timeout=settings.bus_request_timeout,
        max_content_bytes=settings.max_content_bytes,
        max_active_jobs=settings.max_active_jobs_per_user,
        max_messages_per_minute=settings.max_messages_per_minute,
        cancel_wait=settings.cancel_wait_seconds,
    )


async def get_service(bus: BusDep, settings: SettingsDep) -> GatewayService:
    """Build the service over the app's bus."""
    return build_service(bus, settings)


ServiceDep = Annotated[GatewayService, Depends(get_service)]


async def get_verifier(request: Request) -> TokenVerifier:
    """Return the token verifier the app was built with (it caches the JWKS)."""
    return cast(TokenVerifier, request.app.state.verifier)


async def get_current_user(
    verifier: Annotated[TokenVerifier, Depends(get_verifier)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    """Return the user the bearer token names; 401, or 503 while its JWKS cannot be fetched."""
    if credentials is None:
        raise Unauthorized("missing bearer token")
    try:
        return await verifier.verify(credentials.credentials)
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from exc
    except KeysUnavailable as exc:
        # Logged once per outage by the key cache, so not through a handler that logs each.
        raise HTTPException(
            503,
            "the token's signing keys cannot be fetched now; retry later",
            headers={"Retry-After": str(exc.retry_after)},
        ) from exc


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_caller(user: CurrentUser, request_id: RequestId) -> Caller:
    """Return who calls, for the service, and tag the request's logs with it."""
    structlog.contextvars.bind_contextvars(user_id=user.id)
    return Caller(user_id=user.id, request_id=request_id)


CallerDep = Annotated[Caller, Depends(get_caller)]
