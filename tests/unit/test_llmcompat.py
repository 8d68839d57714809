"""Refusals of request options recognised in real servers' answers, remembered and logged once."""

import httpx
import openai
import pytest
from structlog.testing import capture_logs

from services.memory.errors import InvalidModelOutput
from services.memory.formats import next_mode, parse, request
from services.runtime.llmcompat import Feature, ModelQuirks, refuses
from services.simllm.config import Settings as SimSettings
from services.simllm.memories import wants_memory_extraction


def answer(status: int, message: str) -> openai.APIStatusError:
    response = httpx.Response(status, request=httpx.Request("POST", "http://llm/v1/chat"))
    return openai.APIStatusError(message, response=response, body={"message": message})


@pytest.mark.parametrize(
    ("status", "message", "feature", "expected"),
    [
        (400, "Failed to initialize samplers", "json_schema", True),  # llama.cpp
        (400, "'response_format' of type 'json_schema' is not supported", "json_schema", True),
        (400, "'response_format' of type 'json_object' is not supported", "json_object", True),
        (400, "Unrecognized request argument supplied: stream_options", "stream_options", True),
        (422, "extra fields not permitted: stream_options", "stream_options", True),
        (400, "llama2 does not support tools", "tools", True),  # Ollama
        (400, "This model's maximum context length is 8192 tokens", "json_schema", False),
        (400, "This model's maximum context length is 8192 tokens", "tools", False),
        (401, "response_format needs a paid plan", "json_schema", False),
        (500, "stream_options crashed the server", "stream_options", False),
    ],
)
def test_a_refusal_is_a_4xx_naming_the_option(
    status: int, message: str, feature: Feature, expected: bool
) -> None:
    assert refuses(answer(status, message), feature) is expected


def test_a_step_down_is_remembered_per_model_and_logged_once() -> None:
    quirks = ModelQuirks("memory")
    with capture_logs() as logs:
        for _ in range(3):  # concurrent calls meeting the same refusal
            quirks.choose("small", "response_format", "json_object", "400 refused")
    assert quirks.get("small", "response_format", "json_schema") == "json_object"
    assert quirks.get("other", "response_format", "json_schema") == "json_schema"
    assert [entry["now"] for entry in logs] == ["json_object"]


def test_each_way_of_asking_is_recognised_and_its_answer_read() -> None:
    modes = ["json_schema"]
    while (lower := next_mode(modes[-1])) is not None:  # type: ignore[arg-type]
        modes.append(lower)
    assert modes == ["json_schema", "json_object", "prompt"]
    for mode in modes:
        body = {"model": "m", **request(mode, (), 5)}  # type: ignore[arg-type]
        assert wants_memory_extraction(body), mode
    fenced = 'Sure!\n```json\n{"memories": ["The user likes tea"]}\n```'
    assert parse(fenced, "prompt") == ["The user likes tea"]
    with pytest.raises(InvalidModelOutput, match="json_schema"):
        parse(fenced, "json_schema")
    with pytest.raises(InvalidModelOutput, match="prompt"):
        parse("no idea", "prompt")


def test_the_simulation_refuses_only_options_it_knows() -> None:
    assert SimSettings(llm_sim_refuse="tools, stream_options").llm_sim_refuse == {
        "tools", "stream_options",
    }
    with pytest.raises(ValueError, match="cannot refuse"):
        SimSettings(llm_sim_refuse="json")
