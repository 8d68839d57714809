"""The peer's one-node graph: call the simulated OpenAI-compatible model and keep the reply.

Runs inside ``langgraph dev`` (the peer's own environment, not chatbus's). The
model is reached through ``openai.AsyncOpenAI`` at ``PEER_LLM_BASE_URL`` (the
simulated server chatbus's benchmarks use), streamed as chatbus's agent streams.
"""

import operator
import os
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from openai import AsyncOpenAI


class ChatState(TypedDict):
    """The thread's messages, as OpenAI-style dicts; each node's output is appended."""

    messages: Annotated[list[dict[str, Any]], operator.add]


_client: AsyncOpenAI | None = None


def client() -> AsyncOpenAI:
    """Return the one model client of this process, made on first use."""
    global _client
    if _client is None:
        _client = AsyncOpenAI(
            base_url=os.environ["PEER_LLM_BASE_URL"],
            api_key=os.environ.get("PEER_LLM_API_KEY", "sim"),
            max_retries=0,
            timeout=float(os.environ.get("PEER_LLM_TIMEOUT", "600")),
        )
    return _client


async def call_model(state: ChatState) -> dict[str, list[dict[str, Any]]]:
    """Send the thread's messages to the model; append its streamed reply."""
    stream = await client().chat.completions.create(
        model=os.environ.get("PEER_LLM_MODEL", "chatbus-sim"),
        messages=state["messages"],  # type: ignore[arg-type]
        stream=True,
    )
    parts: list[str] = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return {"messages": [{"role": "assistant", "content": "".join(parts)}]}


builder = StateGraph(ChatState)
builder.add_node("call_model", call_model)
builder.add_edge(START, "call_model")
builder.add_edge("call_model", END)
graph = builder.compile()
