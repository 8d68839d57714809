"""Settings every service reads: where the bus is, how to log, metrics and tracing."""

import os
import socket
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_instance() -> str:
    """Name this replica after its host and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ServiceSettings(BaseSettings):
    """Bus, logging and observability settings; each service's ``Settings`` extends this."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    nats_url: str = "nats://127.0.0.1:4222"
    bus_request_timeout: float = Field(default=2.0, gt=0, le=60)
    bus_connect_timeout: float = Field(default=5.0, gt=0)
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    instance: str = Field(default_factory=default_instance)
    # Serve Prometheus metrics on this port (none when unset).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # How long a job's deltas and tool events stay replayable (the JOB_EVENTS stream's max age);
    # its final state stays in the job bucket as long as the job.
    job_events_max_age: float = Field(default=3600.0, ge=60)
    # OTLP/HTTP collector base URL (``.../v1/traces`` is appended); tracing is off when unset.
    otel_exporter_otlp_endpoint: str | None = None

    @field_validator("otel_exporter_otlp_endpoint", mode="before")
    @classmethod
    def _blank_endpoint_is_unset(cls, value: object) -> object:
        # `OTEL_EXPORTER_OTLP_ENDPOINT=` in a compose file means "no tracing".
        return None if isinstance(value, str) and not value.strip() else value
