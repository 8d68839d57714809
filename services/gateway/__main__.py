"""Run the gateway: ``python -m services.gateway``."""

import uvicorn

from services.gateway.app import create_app
from services.gateway.config import Settings
from services.runtime.logging import configure_logging


def main() -> None:
    """Read the settings, set up logging, and serve HTTP until stopped."""
    settings = Settings()
    configure_logging("gateway", settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,  # keep the structured logging configured above
        access_log=False,
    )


if __name__ == "__main__":
    main()
