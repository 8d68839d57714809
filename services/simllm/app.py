"""The HTTP surface of the simulated model: a small slice of the OpenAI API."""

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from services.simllm import model
from services.simllm.config import Settings
from services.simllm.refusals import refusal_for
from services.simllm.tools import SimToolCall, answer_for

log = structlog.get_logger("chatbus.simllm")
MODELS = ("gpt-4o-mini", "chatbus-sim")


class ChatMessage(BaseModel):
    """One message of a prompt; extra OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: Any = None


class ChatRequest(BaseModel):
    """The fields of a chat completion request the simulation reads."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


def openai_error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    """Answer with an OpenAI-style error body."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


class Simulator:
    """Turn requests into paced, deterministic completions and remember what it was asked."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.requests: deque[Any] = deque(maxlen=settings.sim_keep_requests)
        # Last user message of each stream the client closed before its end (a cancel).
        self.aborted: deque[str] = deque(maxlen=settings.sim_keep_requests)
        self.received = 0
        self.open_streams = 0
        self.peak_streams = 0

    def token_delay(self) -> float:
        """Return the pause between two tokens."""
        rate = self.settings.llm_sim_tokens_per_second
        return 1.0 / rate if rate > 0 else 0.0

    async def complete(self, request: ChatRequest, latency: float) -> dict[str, Any]:
        """Build a whole ``chat.completion`` after the time streaming it would take."""
        messages = [m.model_dump() for m in request.messages]
        answer = answer_for(request.model_dump())
        tokens = model.tokenize(answer.text)
        await asyncio.sleep(latency + self.token_delay() * len(tokens))
        prompt_tokens = model.count_tokens(messages)
        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        if answer.calls:
            message.update(content=None, tool_calls=[
                {"id": call_id(), "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in answer.calls
            ])
        return {
            "id": f"chatcmpl-sim-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if answer.calls else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens),
            },
        }

    async def stream(self, request: ChatRequest, latency: float) -> AsyncIterator[str]:
        """Yield the SSE lines of a streamed completion, one token at a time."""
        messages = [m.model_dump() for m in request.messages]
        answer = answer_for(request.model_dump())
        tokens = model.tokenize(answer.text)
        base = {
            "id": f"chatcmpl-sim-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"

        finished = False
        self.open_streams += 1
        self.peak_streams = max(self.peak_streams, self.open_streams)
        try:
            await asyncio.sleep(latency)
            if answer.calls:
                for piece in tool_call_deltas(answer.calls):
                    yield chunk(piece)
            else:
                yield chunk({"role": "assistant", "content": ""})
            delay = self.token_delay()
            for index, token in enumerate(tokens):
                if index and delay:
                    await asyncio.sleep(delay)
                yield chunk({"content": token})
            finished = True
        finally:
            self.open_streams -= 1
            if not finished:
                self.aborted.append(model.last_user_text(messages))
        yield chunk({}, "tool_calls" if answer.calls else "stop")
        if (request.stream_options or {}).get("include_usage"):
            prompt_tokens = model.count_tokens(messages)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens),
            }
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"


def call_id() -> str:
    """Return a fresh tool call id in OpenAI's style."""
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call_deltas(calls: tuple[SimToolCall, ...], piece: int = 8) -> list[dict[str, Any]]:
    """Stream tool calls as OpenAI does: per index, id and name first, then argument pieces."""
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        head = {"index": index, "id": call_id(), "type": "function",
                "function": {"name": call.name, "arguments": ""}}
        deltas.append({"role": "assistant", "content": None, "tool_calls": [head]}
                      if index == 0 else {"tool_calls": [head]})
        for start in range(0, len(call.arguments), piece):
            part = call.arguments[start : start + piece]
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
    return deltas


def create_app(settings: Settings) -> FastAPI:
    """Build the simulated model server."""
    sim = Simulator(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncGenerator[None, None]:
        # Loud on purpose: nobody should mistake canned echoes for a real model.
        log.warning(
            "SIMULATED MODEL SERVER: this is NOT a real LLM; replies are deterministic echoes",
            latency=settings.llm_sim_latency,
            tokens_per_second=settings.llm_sim_tokens_per_second,
            refuses=sorted(settings.llm_sim_refuse),
        )
        yield

    app = FastAPI(title="chatbus simulated model", lifespan=lifespan)
    app.state.simulator = sim

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """List the model ids the simulation answers to (it answers to any)."""
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "chatbus"} for m in MODELS]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        """Answer a chat completion, streamed or whole."""
        try:
            raw = await request.json()
        except ValueError:
            return openai_error(400, "the body is not valid JSON", "invalid_request_error")
        sim.requests.append(raw)
        sim.received += 1
        try:
            chat = ChatRequest.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return openai_error(400, f"{where}: {first['msg']}", "invalid_request_error")
        if (refusal := refusal_for(raw, settings.llm_sim_refuse)) is not None:
            return openai_error(400, refusal, "invalid_request_error")
        directives = model.directives_for([m.model_dump() for m in chat.messages])
        if directives.error:
            return openai_error(500, "simulated failure ([sim:error])", "server_error", "sim_error")
        latency = (
            directives.latency if directives.latency is not None else settings.llm_sim_latency
        )
        if chat.stream:
            return StreamingResponse(
                sim.stream(chat, latency),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return JSONResponse(await sim.complete(chat, latency))

    @app.get("/sim/requests")
    async def received() -> dict[str, Any]:
        """Return the last request bodies received, oldest first, and the streams cut short."""
        return {"items": list(sim.requests), "aborted": list(sim.aborted)}

    @app.get("/sim/stats")
    async def stats() -> dict[str, int]:
        """Count the requests received and the streams open now and at most (benchmarks)."""
        return {
            "received": sim.received,
            "open_streams": sim.open_streams,
            "peak_streams": sim.peak_streams,
            "aborted": len(sim.aborted),
        }

    @app.delete("/sim/requests", status_code=204)
    async def forget() -> None:
        """Forget the recorded request bodies."""
        sim.requests.clear()
        sim.aborted.clear()

    return app
