"""Run the simulated model server: ``python -m services.simllm``."""

import uvicorn

from services.runtime.logging import configure_logging
from services.simllm.app import create_app
from services.simllm.config import Settings


def main() -> None:
    """Read settings from the environment and serve until interrupted."""
    settings = Settings()
    configure_logging("simllm", settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.simllm_host,
        port=settings.simllm_port,
        log_config=None,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
