"""JSON logs carry the bound request id and keep locals out of tracebacks."""

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from services.runtime.logging import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def _fail(secret_token: str) -> None:
    raise ValueError(f"boom {len(secret_token)}")


def test_exception_logged_once_as_json_with_request_id(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("unit", "INFO", "json")
    with structlog.contextvars.bound_contextvars(request_id="req-42"):
        try:
            _fail("TOPSECRET-TOKEN")
        except ValueError:
            logging.getLogger("chatbus.test").exception("handler failed")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1
    record = lines[0]
    assert record["request_id"] == "req-42"
    assert record["service"] == "unit"
    assert record["level"] == "error"
    frames = record["exception"][0]["frames"]
    assert any(frame["name"] == "_fail" for frame in frames)
    assert "TOPSECRET-TOKEN" not in json.dumps(record)
