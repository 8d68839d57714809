"""What an OpenAI-compatible server refuses, recognised from its answer and remembered.

Servers that speak the chat-completions API differ from OpenAI in which request
options they accept (llama.cpp's server, vLLM, Ollama, LM Studio, gateways). A
refusal is a 4xx (or 501) whose message names the option; each service then
steps down (memory: ``json_schema`` → ``json_object`` → a plain prompt; agent:
no ``stream_options``, no ``tools``), and :class:`ModelQuirks` remembers the
step per model for the process's lifetime, logging it once.

What counts as naming an option is deliberately narrow: a 400 about something
else (a prompt too long) must fail as before, not lower what we ask of a model
for good. The patterns were taken from the servers' own messages, e.g.
``'response_format' of type 'json_schema' is not supported with this model``
(OpenAI), ``Failed to initialize samplers`` (llama.cpp with a schema it cannot
turn into a grammar), ``Unrecognized request argument supplied: stream_options``
(Azure OpenAI), ``llama2 does not support tools`` (Ollama).
"""

import re
from typing import Literal

import openai
import structlog

Feature = Literal["json_schema", "json_object", "stream_options", "tools"]
REFUSAL_STATUSES = frozenset({400, 415, 422, 501})
_PATTERNS: dict[Feature, re.Pattern[str]] = {
    "json_schema": re.compile(
        r"response.?format|json.?schema|structured|grammar|sampler|schema", re.IGNORECASE
    ),
    "json_object": re.compile(r"response.?format|json.?object|json mode|grammar|sampler",
                              re.IGNORECASE),
    "stream_options": re.compile(r"stream.?options|include.?usage", re.IGNORECASE),
    "tools": re.compile(r"\btools?\b|tool.?choice|function.?call", re.IGNORECASE),
}


def refuses(exc: openai.APIStatusError, feature: Feature) -> bool:
    """Tell whether an error answer says the server does not support ``feature``."""
    if exc.status_code not in REFUSAL_STATUSES:
        return False
    return bool(_PATTERNS[feature].search(f"{exc.message} {exc.body}"))


class ModelQuirks:
    """Per model, the choice made after a refusal (what to send instead), for this process."""

    def __init__(self, service: str) -> None:
        self.log = structlog.get_logger(f"chatbus.{service}.llm")
        self._chosen: dict[tuple[str, str], str] = {}

    def get(self, model: str, what: str, default: str) -> str:
        """Return what was chosen for ``what`` with ``model``, or ``default``."""
        return self._chosen.get((model, what), default)

    def choose(self, model: str, what: str, value: str, reason: str) -> None:
        """Remember a choice; log it the first time it changes (concurrent calls agree)."""
        if self._chosen.get((model, what)) == value:
            return
        self._chosen[(model, what)] = value
        self.log.warning(
            "model server refused a request option; stepping down for this model from now on",
            model=model, option=what, now=value, reason=reason[:300],
        )
