"""Run the webhooks service: ``python -m services.webhooks``."""

import asyncio

from services.runtime.logging import configure_logging
from services.webhooks.app import create_app
from services.webhooks.config import Settings


def main() -> None:
    """Read settings from the environment and run until stopped."""
    settings = Settings()
    configure_logging("webhooks", settings.log_level, settings.log_format)
    asyncio.run(create_app(settings).run())


if __name__ == "__main__":
    main()
