"""The agent's settings: it refuses to start without a model to talk to."""

import pytest
from pydantic import ValidationError

from services.agent import __main__ as entry
from services.agent.config import PLACEHOLDER_API_KEY, Settings


@pytest.fixture(autouse=True)
def no_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def test_refuses_without_key_or_base_url() -> None:
    with pytest.raises(ValidationError, match="OPENAI_API_KEY"):
        Settings()


def test_base_url_without_key_gets_a_placeholder_key() -> None:
    settings = Settings(openai_base_url="http://127.0.0.1:8090/v1")
    assert settings.api_key == PLACEHOLDER_API_KEY


def test_key_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("AGENT_MAX_ATTEMPTS", "5")
    settings = Settings()
    assert settings.api_key == "sk-test"
    assert settings.agent_max_attempts == 5
    assert settings.heartbeat_interval == pytest.approx(settings.agent_ack_wait / 3)


def test_main_exits_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        entry.main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("agent: cannot start: no model configured")


def test_ack_pending_must_leave_room_for_the_workers() -> None:
    with pytest.raises(ValidationError, match="AGENT_MAX_ACK_PENDING"):
        Settings(openai_base_url="http://x/v1", agent_concurrency=500, agent_max_ack_pending=100)


def test_new_knobs_have_their_documented_defaults() -> None:
    settings = Settings(openai_base_url="http://x/v1")
    assert (settings.agent_order_wait, settings.agent_order_retry_delay) == (60.0, 1.0)
    assert settings.agent_shutdown_grace == 20.0


def test_a_blank_key_counts_as_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    settings = Settings()
    assert settings.openai_api_key is None
    assert settings.api_key  # a placeholder: the SDK refuses an empty key
