"""The quick start as a user runs it: ``chatbus up``, then chat over HTTP."""

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.launcher import CHATBUS, SECRET, RunningStack, chatbus_up

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[RunningStack]:
    with chatbus_up(tmp_path / "state") as running:
        yield running


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
