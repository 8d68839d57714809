"""CPU per streamed model call: the OpenAI SDK's typed ``create`` against the agent's path.

Starts the simulated model (no latency, no token pacing), then makes ``--calls``
streaming calls each way with the same messages and the agent's tool schemas,
reading every chunk, and reports the process CPU time per call:

- ``sdk_create``: ``client.chat.completions.create(..., stream=True)``, chunks as models;
- ``agent``: ``services.agent.llm.OpenAIChat.stream`` (the SDK's client on its raw
  ``post``, chunks as JSON).

Install: ``pip install -e .``.
Run: ``python bench/llm_call_cpu.py [--calls 300] [--rounds 2]``.
"""

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.agent.config import Settings  # noqa: E402
from services.agent.llm import ChatMessage, OpenAIChat  # noqa: E402
from services.agent.tools import DEFAULT_TOOLS  # noqa: E402
from services.launcher.natsserver import free_port, wait_for_port_async  # noqa: E402

MESSAGES: list[ChatMessage] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "hello there, how are you today?"},
]


async def cpu_per_call(call: Callable[[], Awaitable[None]], calls: int) -> float:
    """Return the milliseconds of process CPU one call takes, after a warm-up."""
    for _ in range(20):
        await call()
    began = time.process_time()
    for _ in range(calls):
        await call()
    return (time.process_time() - began) / calls * 1000


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    env = dict(
        os.environ, SIMLLM_PORT=str(port), LLM_SIM_LATENCY="0",
        LLM_SIM_TOKENS_PER_SECOND="0", LOG_LEVEL="WARNING",
    )
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.simllm", env=env, cwd=ROOT
    )
    try:
        await wait_for_port_async(port, 20)
        base_url = f"http://127.0.0.1:{port}/v1"
        settings = Settings(openai_base_url=base_url, llm_stream_usage=False)
        tools: list[Any] = list(DEFAULT_TOOLS.specs())
        client = openai.AsyncOpenAI(api_key="sim", base_url=base_url, max_retries=0)
        agent = OpenAIChat(settings)

        async def sdk_create() -> None:
            stream = await client.chat.completions.create(
                model=settings.llm_model, messages=MESSAGES, stream=True, tools=tools
            )
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices:
                        _ = choice.delta.content

        async def agent_path() -> None:
            async for _ in agent.stream(MESSAGES, tools=tools):
                pass

        results: dict[str, list[float]] = {"sdk_create": [], "agent": []}
        for _ in range(args.rounds):
            results["sdk_create"].append(await cpu_per_call(sdk_create, args.calls))
            results["agent"].append(await cpu_per_call(agent_path, args.calls))
        await client.close()
        await agent.close()
    finally:
        sim.terminate()
        await sim.wait()
    for name, values in results.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:>10}: {shown} ms of CPU per call ({args.calls} calls per round)")
    ratio = min(results["sdk_create"]) / min(results["agent"])
    print(f"the agent's path costs 1/{ratio:.1f} of the typed create")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
