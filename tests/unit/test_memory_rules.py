"""Settings, the model request and the retry rule of the memory service."""

import uuid

import pytest
from pydantic import ValidationError

from contracts.base import utcnow
from contracts.history import MessageRecord
from services.memory.config import Settings
from services.memory.errors import HistoryUnavailable, InvalidModelOutput, ModelFailed, verdict_for
from services.memory.llm import MemoryExtraction, parse, prompt, response_format
from services.runtime.settle import Settle
from services.simllm.memories import memory_extraction_for, wants_memory_extraction


def test_settings_refuse_to_start_without_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValidationError, match="no model configured"):
        Settings(_env_file=None)
    monkeypatch.setenv("OPENAI_API_KEY", " ")
    monkeypatch.setenv("OPENAI_BASE_URL", "")
    with pytest.raises(ValidationError, match="no model configured"):
        Settings()


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "LLM_MODEL", "MEMORY_MAX_ATTEMPTS", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    settings = Settings()
    assert settings.database_url == "sqlite+aiosqlite:///.chatbus/chatbus.db"
    assert (settings.llm_model, settings.llm_timeout, settings.llm_max_retries) == (
        "gpt-4o-mini",
        60.0,
        2,
    )
    assert (settings.memory_max_attempts, settings.memory_max_per_session) == (3, 10)
    assert settings.api_key == "not-needed"
    assert settings.heartbeat_interval < settings.memory_ack_wait


def test_the_request_asks_for_strict_structured_output() -> None:
    fmt = response_format()
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "memory_extraction"
    assert fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["required"] == ["memories"]
    assert schema["additionalProperties"] is False  # strict mode refuses a schema without it
    assert wants_memory_extraction({"response_format": fmt})


def test_the_prompt_is_the_instructions_then_the_conversation() -> None:
    sid = uuid.uuid4()
    msgs = [
        MessageRecord(
            id=uuid.uuid4(),
            session_id=sid,
            user_id="u",
            role=role,
            content=text,
            created_at=utcnow(),
            job_id=None,
        )
        for role, text in (("user", "I like tea"), ("assistant", "Noted"))
    ]
    built = prompt(msgs, limit=7)
    assert built[0]["role"] == "system" and "at most 7" in built[0]["content"]
    assert built[1:] == [
        {"role": "user", "content": "I like tea"},
        {"role": "assistant", "content": "Noted"},
    ]
    # The simulated model remembers the user's statements of this very prompt.
    assert memory_extraction_for(list(built)) == {"memories": ["The user said: I like tea"]}


def test_parse_accepts_only_a_memory_extraction() -> None:
    assert parse('{"memories": ["a", "b"]}') == ["a", "b"]
    for bad in (None, "", "[]", '{"memories": null}', '{"memories": [], "extra": 1}'):
        with pytest.raises(InvalidModelOutput):
            parse(bad)
    assert MemoryExtraction(memories=[]).memories == []


@pytest.mark.parametrize(
    ("exc", "deliveries", "settle"),
    [
        (HistoryUnavailable("down"), 1, Settle.RETRY),
        (HistoryUnavailable("down"), 2, Settle.RETRY),
        (HistoryUnavailable("down"), 3, Settle.DROP),
        (InvalidModelOutput("junk"), 3, Settle.DROP),
        (ModelFailed("model answered 401", retryable=False), 1, Settle.DROP),
        (RuntimeError("bug"), 1, Settle.RETRY),
        (RuntimeError("bug"), 5, Settle.DROP),
    ],
)
def test_failed_attempts_retry_until_the_last_then_give_up(
    exc: Exception, deliveries: int, settle: Settle
) -> None:
    verdict = verdict_for(exc, deliveries=deliveries, max_attempts=3, retry_delay=1.5)
    assert verdict.settle is settle
    if settle is Settle.RETRY:
        assert verdict.delay == 1.5
    else:
        reason = verdict.dead_letter or ""
        assert str(exc) in reason and f"after {deliveries} attempt" in reason
        if isinstance(exc, RuntimeError):
            assert "unexpected RuntimeError" in reason
