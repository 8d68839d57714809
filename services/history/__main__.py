"""Run the history service: ``python -m services.history``."""

from services.history.app import create_app
from services.history.config import Settings
from services.runtime.logging import configure_logging
from services.runtime.loop import run


def main() -> None:
    """Read settings from the environment and run until stopped."""
    settings = Settings()
    configure_logging("history", settings.log_level, settings.log_format)
    run(create_app(settings).run())


if __name__ == "__main__":
    main()
