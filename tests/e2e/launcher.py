"""The stack as a user starts it: ``chatbus up`` in a subprocess, and what it printed.

Used by the end-to-end tests that drive the stack the way the quick start does
(``test_quickstart.py``, the web app, the client, the terminal chat); no pytest here.
"""

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from services.gateway.auth import mint_token
from services.launcher.natsserver import free_port

CHATBUS = str(Path(sys.executable).parent / "chatbus")
SECRET = "e2e-secret"
# Inherited settings that would point the stack at someone else's servers or keys.
SCRUBBED = {
    "NATS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "DATABASE_URL", "LLM_MODEL",
    "JWT_AUDIENCE", "JWT_ISSUER", "JWT_JWKS_URL", "REDIS_URL", "METRICS_PORT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
}


@dataclass
class RunningStack:
    """A ``chatbus up`` process and what it printed."""

    proc: subprocess.Popen[str]
    base_url: str
    state_dir: Path
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def read_output(self) -> None:
        """Collect the launcher's output; note when it says the stack is up."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("chatbus is up"):
                self.ready.set()
        self.ready.set()

    def printed(self) -> str:
        """Return everything the launcher printed so far."""
        return "\n".join(self.lines)

    def app_link(self) -> str:
        """Return the web app link the launcher printed (the dev token in its fragment)."""
        found = re.search(r"(http://\S+/#token=\S+)", self.printed())
        assert found, f"no web app link printed:\n{self.printed()}"
        return found.group(1)

    def token(self, user: str) -> str:
        """Mint a token for ``user`` signed with the stack's secret."""
        return mint_token(SECRET, user)


def stack_env(state_dir: Path, port: int, **extra: str) -> dict[str, str]:
    """Environment of a fresh user: no NATS, no key, no database configured."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update(
        CHATBUS_STATE_DIR=str(state_dir),
        GATEWAY_PORT=str(port),
        JWT_SECRET=SECRET,
        LLM_SIM_LATENCY="0.05",
        LLM_SIM_TOKENS_PER_SECOND="200",
    )
    env.update(extra)
    return env


@contextmanager
def chatbus_up(state_dir: Path, **extra_env: str) -> Iterator[RunningStack]:
    """Run ``chatbus up`` until the stack is ready; stop it with Ctrl-C afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        [CHATBUS, "up"],
        env=stack_env(state_dir, port, **extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = RunningStack(proc, f"http://127.0.0.1:{port}", state_dir)
    reader = threading.Thread(target=running.read_output, daemon=True)
    reader.start()
    try:
        assert running.ready.wait(90), "chatbus up printed nothing ready within 90 s"
        assert proc.poll() is None, f"chatbus up exited early:\n{running.printed()}"
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
