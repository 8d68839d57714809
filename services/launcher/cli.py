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
    from services.gateway.auth import mint_token
    from services.launcher.stack import Stack

    settings = LauncherSettings()

    def token_for(user_id: str) -> str:
        return mint_token(settings.jwt_secret, user_id)

    raise typer.Exit(asyncio.run(Stack(settings).up(token_for)))


@app.command()
def token(
    user: Annotated[str, typer.Argument(help="user id, the token's `sub`")],
    ttl: Annotated[int, typer.Option(help="lifetime in seconds")] = 86400,
    audience: Annotated[str | None, typer.Option(help="`aud` claim")] = None,
) -> None:
    """Print a token for USER signed with JWT_SECRET (HS256)."""
    from services.gateway.auth import mint_token

    settings = LauncherSettings()
    typer.echo(mint_token(settings.jwt_secret, user, ttl_seconds=ttl, audience=audience))


def main() -> None:
    """Entry point of the console script."""
    app()
