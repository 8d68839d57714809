"""Settings every service reads: where the bus is and how to log."""

import os
import socket
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_instance() -> str:
    """Name this replica after its host and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ServiceSettings(BaseSettings):
    """Bus and logging settings; each service's ``Settings`` extends this."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    nats_url: str = "nats://127.0.0.1:4222"
    bus_request_timeout: float = Field(default=2.0, gt=0, le=60)
    bus_connect_timeout: float = Field(default=5.0, gt=0)
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    instance: str = Field(default_factory=default_instance)
