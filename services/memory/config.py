"""Settings of the memory service."""

from services.runtime.config import ServiceSettings


class Settings(ServiceSettings):
    """Bus settings; memory has no store of its own yet."""
