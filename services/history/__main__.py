"""Run the history service: ``python -m services.history``."""

import asyncio

from services.history.app import create_app
from services.history.config import Settings
from services.runtime.logging import configure_logging


def main() -> None:
    """Read settings from the environment and run until stopped."""
    settings = Settings()
    configure_logging("history", settings.log_level, settings.log_format)
    asyncio.run(create_app(settings).run())


if __name__ == "__main__":
    main()
