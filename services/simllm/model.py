"""The simulated model: what it answers is a deterministic function of the request.

Reply rule (tests compute the expected text with :func:`reply_for`)::

    "Echo: <content of the last user message> (turn <number of user messages>)"

e.g. ``"Echo: hello (turn 2)"`` for the second user message of a conversation, so
a test can see that earlier context reached the model. The reply is split into
word tokens (each word with its trailing space) and paced per token.

Directives in the last user message inject failures (they stay in the echo):

- ``[sim:error]`` answers HTTP 500 with an OpenAI-style error body;
- ``[sim:slow=N]`` waits N seconds (a float) before the first token instead of
  the configured latency.

Structured output (:mod:`services.simllm.memories`): a request whose
``response_format`` is ``json_schema`` named ``memory_extraction`` is answered
(whole or streamed) with the JSON of ``memory_extraction_for(messages)``; so is
one with ``json_object`` or no ``response_format`` whose system message names
``memory_extraction`` (without a format, the JSON comes in a Markdown fence).

Servers that are not OpenAI (:mod:`services.simllm.refusals`): the setting
``LLM_SIM_REFUSE`` (a comma list of ``json_schema``, ``json_object``,
``stream_options``, ``tools``; empty by default) makes the simulation refuse
each listed option as such a server does: a request using it is answered 400
``invalid_request_error`` with that server's message (``'response_format' of
type 'json_schema' is not supported with this model``; the same for
``json_object``; ``Unrecognized request argument supplied: stream_options``;
``<model> does not support tools``), before any directive is read.

Tools (:mod:`services.simllm.tools`), when the request offers ``tools``; "the
text" is the last user message, matched case-insensitively:

1. ``[sim:loop-tools]`` calls the first offered tool with ``{"query": "loop"}``,
   every round, even after tool results (to hit a caller's round limit);
2. otherwise, once a ``role: tool`` message follows the last user message, no
   more calls: the reply is the echo followed by each tool result,
   ``"Echo: <text> (turn N) [<tool name>: <result>]"`` (one bracket per result);
3. ``[sim:unknown-tool]`` calls ``no_such_tool`` with ``{}``;
4. ``[sim:bad-tool-args]`` calls the first offered tool with ``{"query": 42}``;
4a. ``[sim:call=NAME]`` calls the offered tool NAME with ``{}``, and
   ``[sim:call=NAME {...}]`` with that JSON object as its arguments (sent as
   written), e.g. ``[sim:call=echo__whoami {"note": "hi"}]`` (an MCP tool);
5. ``search history for X`` calls ``search_history`` with ``{"query": "X"}`` (X:
   the rest of the text, trailing spaces and ``.,;:!?"'`` stripped);
6. ``recall`` or ``remember`` anywhere calls ``recall_memories`` with
   ``{"query": <the word after the first "about">}``, or ``""`` without one;

rules 4a, 5 and 6 apply only when that tool is offered. A call is answered with
``finish_reason: "tool_calls"``; streamed, as OpenAI does: per call ``index`` a
first fragment with id, type and name, then the arguments in pieces.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ERROR_DIRECTIVE = "[sim:error]"
_SLOW = re.compile(r"\[sim:slow=(\d+(?:\.\d+)?)\]")
_TOKEN = re.compile(r"\S+\s*")


@dataclass(frozen=True)
class Directives:
    """Failure injection asked for by the last user message."""

    error: bool = False
    latency: float | None = None


def text_of(content: object) -> str:
    """Return the text of a message content: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping)
        )
    return ""


def last_user_text(messages: Sequence[Mapping[str, object]]) -> str:
    """Return the content of the last user message, or an empty string."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def reply_for(messages: Sequence[Mapping[str, object]]) -> str:
    """Return the reply the simulated model gives to a conversation."""
    turns = sum(1 for message in messages if message.get("role") == "user")
    return f"Echo: {last_user_text(messages)} (turn {turns})"


def directives_for(messages: Sequence[Mapping[str, object]]) -> Directives:
    """Read the failure-injection directives of the last user message."""
    text = last_user_text(messages)
    slow = _SLOW.search(text)
    return Directives(
        error=ERROR_DIRECTIVE in text, latency=float(slow.group(1)) if slow else None
    )


def tokenize(text: str) -> list[str]:
    """Split text into word tokens, each keeping its trailing whitespace."""
    return _TOKEN.findall(text)


def count_tokens(messages: Sequence[Mapping[str, object]]) -> int:
    """Count the word tokens of every message of a prompt."""
    return sum(len(tokenize(text_of(message.get("content")))) for message in messages)
