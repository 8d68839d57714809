"""The web chat app: ``/`` serves its page, ``/web/`` its modules and styles, as files.

The app is plain HTML, CSS and ES modules with no build step and no third-party
code; it talks to the same REST API as any client, with the caller's token.
The token reaches the page in the URL fragment (never sent to a server) and
lives in the tab's ``sessionStorage``: the headers below keep every byte of
script first-party and send no referrer anywhere.
"""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # Small files that change with every release: revalidate rather than guess a lifetime.
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["web app"])


class WebFiles(StaticFiles):
    """Static files with the app's security and caching headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        """Answer one file of the app."""
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """Serve the web chat app's page."""
    return FileResponse(WEB_ROOT / "index.html", headers=HEADERS)


def install(app: FastAPI) -> None:
    """Serve the web app from ``app``: the page at ``/``, its files under ``/web/``."""
    app.include_router(router)
    app.mount("/web", WebFiles(directory=WEB_ROOT), name="web")
