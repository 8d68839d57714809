"""Run the agent: ``python -m services.agent``."""

import asyncio
import sys

from pydantic import ValidationError

from services.agent.app import create_app
from services.agent.config import Settings
from services.runtime.logging import configure_logging


def describe(exc: ValidationError) -> str:
    """Squeeze settings errors into one line."""
    return "; ".join(
        ".".join(map(str, e["loc"])) + (": " if e["loc"] else "") + e["msg"].removeprefix(
            "Value error, "
        )
        for e in exc.errors()
    )


def main() -> None:
    """Read settings from the environment and run until interrupted."""
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"agent: cannot start: {describe(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging("agent", settings.log_level, settings.log_format)
    asyncio.run(create_app(settings).run())


if __name__ == "__main__":
    main()
