"""The quick start as a user runs it: ``chatbus up``, then chat over HTTP."""

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from services.launcher.natsserver import free_port

pytestmark = pytest.mark.e2e

CHATBUS = str(Path(sys.executable).parent / "chatbus")
SECRET = "e2e-secret"


@dataclass
class RunningStack:
    """A ``chatbus up`` process and what it printed."""

    proc: subprocess.Popen[str]
    base_url: str
    state_dir: Path
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def read_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("chatbus is up"):
                self.ready.set()
        self.ready.set()

    def printed(self) -> str:
        return "\n".join(self.lines)


def stack_env(state_dir: Path, port: int) -> dict[str, str]:
    """Environment of a fresh user: no NATS, no key, no database configured."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"NATS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "DATABASE_URL", "LLM_MODEL"}
    }
    env.update(
        CHATBUS_STATE_DIR=str(state_dir),
        GATEWAY_PORT=str(port),
        JWT_SECRET=SECRET,
        LLM_SIM_LATENCY="0.05",
        LLM_SIM_TOKENS_PER_SECOND="200",
    )
    return env


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[RunningStack]:
    port = free_port()
    proc = subprocess.Popen(
        [CHATBUS, "up"],
        env=stack_env(tmp_path / "state", port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = RunningStack(proc, f"http://127.0.0.1:{port}", tmp_path / "state")
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


@pytest.mark.timeout(240)
def test_token_session_message_history(stack: RunningStack) -> None:
    printed = stack.printed()
    assert "SIMULATED model server" in printed
    match = re.search(r"export TOKEN=(\S+)", printed)
    assert match, printed
    minted = subprocess.run(
        [CHATBUS, "token", "alice"],
        env={**os.environ, "JWT_SECRET": SECRET},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with httpx.Client(base_url=stack.base_url, timeout=40) as client:
        assert client.get("/api/sessions").status_code == 401
        auth = {"Authorization": f"Bearer {minted}"}
        dev = {"Authorization": f"Bearer {match.group(1)}"}

        created = client.post("/api/sessions", json={"persona": "default"}, headers=auth)
        assert created.status_code == 201, created.text
        session = created.json()
        assert session["status"] == "active"
        assert client.get(f"/api/sessions/{session['id']}", headers=dev).status_code == 404

        posted = client.post(
            f"/api/sessions/{session['id']}/messages",
            params={"wait": 30},
            json={"content": "hello from the quick start"},
            headers=auth,
        )
        assert posted.status_code == 200, posted.text
        job = posted.json()
        assert job["status"] == "completed", job
        assert posted.headers["location"] == f"/api/jobs/{job['id']}"
        assert "hello from the quick start" in job["reply"]["content"]

        fetched = client.get(f"/api/jobs/{job['id']}", headers=auth).json()
        assert fetched["status"] == "completed"
        assert fetched["reply"]["id"] == job["reply"]["id"]

        history = client.get(f"/api/sessions/{session['id']}/messages", headers=auth)
        assert history.status_code == 200
        items = history.json()["items"]
        assert [m["role"] for m in items] == ["assistant", "user"]
        assert items[1]["content"] == "hello from the quick start"
        assert items[0]["content"] == job["reply"]["content"]
        assert {m["job_id"] for m in items} == {job["id"]}


def stack_processes(state_dir: Path) -> dict[int, str]:
    """Return pid → command line of every process started for this state folder."""
    marker = f"CHATBUS_STATE_DIR={state_dir}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in environ.split(b"\0") and "chatbus up" not in cmdline:
            found[int(entry.name)] = cmdline
    return found


def test_ctrl_c_stops_every_child(stack: RunningStack) -> None:
    children = stack_processes(stack.state_dir)
    assert len(children) >= 6, children  # nats, simllm and the four services
    stack.proc.send_signal(signal.SIGINT)
    assert stack.proc.wait(timeout=60) == 0
    assert "chatbus: stopped" in stack.printed()
    assert stack_processes(stack.state_dir) == {}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{stack.base_url}/healthz", timeout=2)


def test_a_crashed_service_is_reported(stack: RunningStack) -> None:
    processes = stack_processes(stack.state_dir)
    history = [pid for pid, cmd in processes.items() if "services.history" in cmd]
    assert len(history) == 1
    os.kill(history[0], signal.SIGKILL)
    assert stack.proc.wait(timeout=60) == 1
    printed = stack.printed()
    assert "history exited with code -9" in printed, printed
    assert stack_processes(stack.state_dir) == {}
