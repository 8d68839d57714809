"""Run the LangGraph peer for a benchmark: the simulated model and ``langgraph dev``.

The peer is the LangGraph Agent Server in its in-memory dev runtime, started as
``langgraph dev --no-browser --no-reload --n-jobs-per-worker N`` (without the
flag it runs one run at a time) in a work directory of its own: its
``.langgraph_api`` folder, where it saves threads, runs and checkpoints every
~10 s, lands there. Its graph (``graph.py`` beside this file) calls the same
simulated model chatbus's benchmarks use (``python -m services.simllm``) through
``openai.AsyncOpenAI``.

The server needs its own environment (requirements.txt beside this file: it
cannot share chatbus's, see there); this module runs in chatbus's and finds
the ``langgraph`` command in ``bench/peers/langgraph/.venv`` unless told.
Every address is loopback; tracing, version checks and anything that would
reach out are switched off.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from bench.isolation import stop  # noqa: E402
from services.launcher.natsserver import free_port, wait_for_port  # noqa: E402

GRAPH_ID = "chat"
DEFAULT_LANGGRAPH = HERE / ".venv" / "bin" / "langgraph"
TERMINAL = {"success", "error", "timeout", "interrupted"}
# Inherited settings that would send traces or keys somewhere, or point the graph elsewhere.
SCRUBBED_PREFIXES = ("LANGSMITH_", "LANGCHAIN_", "LANGGRAPH_", "OPENAI_", "PEER_LLM_")
INSTALL = (
    "python -m venv bench/peers/langgraph/.venv && "
    "bench/peers/langgraph/.venv/bin/pip install -r bench/peers/langgraph/requirements.txt"
)


def find_langgraph(given: Path | None) -> Path:
    """Return the ``langgraph`` command to run, or exit saying how to install it."""
    for candidate in (given, DEFAULT_LANGGRAPH):
        if candidate is not None and candidate.exists():
            return candidate
    sys.exit(f"langgraph CLI not found; install the peer's environment:\n  {INSTALL}")


class LangGraphPeer:
    """The simulated model and one ``langgraph dev`` server, each restartable, in ``work``."""

    def __init__(
        self,
        work: Path,
        *,
        latency: float,
        jobs_per_worker: int,
        langgraph: Path,
        keep_requests: int = 200,
        ready_timeout: float = 120,
    ) -> None:
        self.work = work
        self.home = work / "langgraph"  # the server's cwd: .langgraph_api is written here
        self.home.mkdir(parents=True, exist_ok=True)
        self.latency = latency
        self.jobs_per_worker = jobs_per_worker
        self.langgraph = langgraph
        self.keep_requests = keep_requests
        self.ready_timeout = ready_timeout
        self.sim_port = free_port()
        self.port = free_port()
        self.sim: subprocess.Popen[bytes] | None = None
        self.server: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the base URL of the peer's API."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def sim_url(self) -> str:
        """Return the base URL of the simulated model server."""
        return f"http://127.0.0.1:{self.sim_port}"

    @property
    def saved_file(self) -> Path:
        """Return the file the dev runtime saves threads and runs to."""
        return self.home / ".langgraph_api" / ".langgraph_ops.pckl"

    def pids(self) -> dict[str, int]:
        """Return the pid of each running process, by role."""
        procs = {"langgraph": self.server, "simllm": self.sim}
        return {n: p.pid for n, p in procs.items() if p is not None and p.poll() is None}

    def start(self) -> None:
        """Start the model, then the server; wait until both answer."""
        env = {
            **os.environ,
            "SIMLLM_HOST": "127.0.0.1",
            "SIMLLM_PORT": str(self.sim_port),
            "LLM_SIM_LATENCY": str(self.latency),
            "LLM_SIM_TOKENS_PER_SECOND": "0",
            "SIM_KEEP_REQUESTS": str(self.keep_requests),
        }
        self.sim = self._spawn([sys.executable, "-m", "services.simllm"], env, "simllm", ROOT)
        if not wait_for_port(self.sim_port, 30):
            raise RuntimeError(f"the simulated model did not start; see {self.work}")
        self.start_server()

    def start_server(self) -> None:
        """Start (or start again) ``langgraph dev`` on the same port and folder; wait for /ok."""
        config = self.home / "langgraph.json"
        # Graph paths in langgraph.json are taken from the cwd: point at the file itself.
        graphs = {GRAPH_ID: f"{HERE / 'graph.py'}:graph"}
        config.write_text(json.dumps({"dependencies": [str(HERE)], "graphs": graphs}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
        env.update(
            PEER_LLM_BASE_URL=f"{self.sim_url}/v1",
            PEER_LLM_TIMEOUT=str(self.latency + 600),
            LANGSMITH_TRACING="false",
            LANGGRAPH_NO_VERSION_CHECK="true",
            PYTHONUNBUFFERED="1",
        )
        argv = [
            str(self.langgraph), "dev", "--no-browser", "--no-reload",
            "--n-jobs-per-worker", str(self.jobs_per_worker),
            "--host", "127.0.0.1", "--port", str(self.port), "--config", str(config),
        ]
        self.server = self._spawn(argv, env, "langgraph", self.home)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"langgraph dev exited; see {self.work / 'langgraph.log'}")
            try:
                if httpx.get(f"{self.url}/ok", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"langgraph dev not ready in {self.ready_timeout} s")

    def kill_server(self) -> None:
        """SIGKILL the server: no shutdown hook, no last save."""
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait(10)

    def close(self) -> None:
        """Stop the server (politely: it saves on the way out), then the model."""
        for proc in (self.server, self.sim):
            if proc is not None:
                stop(proc)

    def __enter__(self) -> "LangGraphPeer":
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _spawn(
        self, argv: list[str], env: dict[str, str], name: str, cwd: Path
    ) -> subprocess.Popen[bytes]:
        with (self.work / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )


def client(base_url: str, timeout: float = 60) -> httpx.AsyncClient:
    """Return an async HTTP client with no connection cap, as chatbus's burst uses."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits)


def run_body(content: str) -> dict[str, Any]:
    """Return the body of a run of the peer's graph on one user message."""
    return {"assistant_id": GRAPH_ID, "input": {"messages": [{"role": "user", "content": content}]}}


async def create_threads(http: httpx.AsyncClient, count: int, gate: int = 16) -> list[str]:
    """Create ``count`` threads (setup, not measured: gently, retried); return their ids."""
    limiter = asyncio.Semaphore(gate)

    async def one() -> str:
        for attempt in range(5):
            async with limiter:
                resp = await http.post("/threads", json={})
            if resp.status_code == 200:
                return str(resp.json()["thread_id"])
            await asyncio.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"POST /threads kept failing: {resp.status_code} {resp.text[:200]}")

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def get_again(http: httpx.AsyncClient, url: str, tries: int = 3) -> httpx.Response:
    """GET, again after a dropped connection (uvicorn closes idle keep-alives after 5 s)."""
    for attempt in range(tries):
        try:
            return await http.get(url)
        except httpx.TransportError:
            if attempt == tries - 1:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def run_states(
    http: httpx.AsyncClient, runs: list[tuple[str, str]], gate: int = 100
) -> dict[tuple[str, str], dict[str, Any] | None]:
    """Read each (thread, run); None where the peer answers 404 (it does not know the run)."""
    limiter = asyncio.Semaphore(gate)
    found: dict[tuple[str, str], dict[str, Any] | None] = {}

    async def one(thread: str, run: str) -> None:
        async with limiter:
            resp = await get_again(http, f"/threads/{thread}/runs/{run}")
        if resp.status_code == 404:
            found[(thread, run)] = None
        else:
            resp.raise_for_status()
            found[(thread, run)] = resp.json()

    await asyncio.gather(*(one(t, r) for t, r in runs))
    return found


async def assistant_replies(
    http: httpx.AsyncClient, threads: list[str], gate: int = 50
) -> Counter[int]:
    """Count assistant messages per thread (1 is right; 0 lost, 2+ doubled, -1 unreadable)."""
    limiter = asyncio.Semaphore(gate)
    counts: Counter[int] = Counter()

    async def one(thread: str) -> None:
        async with limiter:
            try:
                resp = await get_again(http, f"/threads/{thread}/state")
            except httpx.HTTPError:
                counts[-1] += 1
                return
        if resp.status_code != 200:
            counts[-1] += 1
            return
        messages = (resp.json().get("values") or {}).get("messages", [])
        counts[sum(1 for m in messages if m.get("role") == "assistant")] += 1

    await asyncio.gather(*(one(t) for t in threads))
    return counts


async def model_calls(sim_url: str) -> Counter[str]:
    """Count the model requests the simulator kept, by their last user message."""
    async with httpx.AsyncClient(base_url=sim_url, timeout=30) as http:
        bodies = (await http.get("/sim/requests")).json()["items"]
    seen: Counter[str] = Counter()
    for body in bodies:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        if users:
            seen[str(users[-1].get("content"))] += 1
    return seen
