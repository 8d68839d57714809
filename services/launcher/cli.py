"""The ``chatbus`` command."""

import asyncio
from typing import Annotated

import typer

from services.launcher.config import LauncherSettings

app = typer.Typer(
    help="chatbus: an LLM chat backend as microservices over NATS.", no_args_is_help=True
)


@app.command()
def up() -> None:
    """Run the whole stack on this machine until Ctrl-C."""
    from services.launcher.stack import Stack

    settings = LauncherSettings()

    raise typer.Exit(asyncio.run(Stack(settings).up(lambda user: dev_token(settings, user))))


def dev_token(settings: LauncherSettings, user_id: str) -> str:
    """Sign the token the launcher prints: the gateway's secret, audience and issuer."""
    from services.gateway.auth import mint_token

    return mint_token(
        settings.jwt_secret, user_id, audience=settings.jwt_audience, issuer=settings.jwt_issuer
    )


@app.command()
def migrate() -> None:
    """Bring the history, memory and webhooks schemas of DATABASE_URL up to date, then exit."""
    from services.history.config import Settings
    from services.history.models import DATABASE as history_db
    from services.memory.models import DATABASE as memory_db
    from services.webhooks import db as webhooks_db

    url = Settings().database_url

    async def upgrade() -> None:
        await history_db.migrate(url)
        await memory_db.migrate(url)
        await webhooks_db.migrate(url)

    asyncio.run(upgrade())
    typer.echo("chatbus: history, memory and webhooks schemas are up to date")


@app.command()
def token(
    user: Annotated[str, typer.Argument(help="user id, the token's `sub`")],
    ttl: Annotated[int, typer.Option(help="lifetime in seconds")] = 86400,
    audience: Annotated[
        str | None, typer.Option(help="`aud` claim", envvar="JWT_AUDIENCE")
    ] = None,
    issuer: Annotated[str | None, typer.Option(help="`iss` claim", envvar="JWT_ISSUER")] = None,
) -> None:
    """Print a token for USER signed with JWT_SECRET (HS256)."""
    from services.gateway.auth import mint_token

    settings = LauncherSettings()
    token = mint_token(settings.jwt_secret, user, ttl_seconds=ttl, audience=audience, issuer=issuer)
    typer.echo(token)


@app.command()
def chat(
    url: Annotated[str, typer.Option(help="the gateway")] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None,
        typer.Option(help="API token; default: a dev token of --user", envvar="CHATBUS_TOKEN"),
    ] = None,
    user: Annotated[str, typer.Option(help="user of the dev token made without --token")] = "dev",
    persona: Annotated[str, typer.Option(help="persona of the session to chat in")] = "default",
) -> None:
    """Chat in the terminal with the stack at --url; replies stream as they are written."""
    from services.launcher.chat import run_chat

    raise typer.Exit(run_chat(url, token or dev_token(LauncherSettings(), user), persona))


@app.command()
def asyncapi(
    out: Annotated[str, typer.Option(help="file to write; `-` prints it")] = "docs/asyncapi.json",
) -> None:
    """Write the AsyncAPI document of the bus, generated from the contracts."""
    from pathlib import Path

    from services.runtime.asyncapi import render

    if out == "-":
        typer.echo(render(), nl=False)
        return
    Path(out).write_text(render(), encoding="utf-8")
    typer.echo(f"chatbus: wrote {out}")


def main() -> None:
    """Entry point of the console script."""
    app()
