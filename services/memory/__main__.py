"""Run the memory service: ``python -m services.memory``."""

from services.memory.app import create_app
from services.memory.config import Settings
from services.runtime.logging import configure_logging
from services.runtime.loop import run


def main() -> None:
    """Read settings from the environment and run until stopped."""
    settings = Settings()
    configure_logging("memory", settings.log_level, settings.log_format)
    run(create_app(settings).run())


if __name__ == "__main__":
    main()
