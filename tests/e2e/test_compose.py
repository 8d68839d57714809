"""docker-compose.yml for real: three agents, one killed mid-job, every job answered once.

Brings the compose stack up from the images ``docker/build-images.sh`` builds
(names in ``docker/local-images.env``) as its own compose project, with the
gateway published on a free loopback port and the simulated model slow enough
that jobs are still running when an agent container is killed. Skipped, with
the reason, without a Docker engine, a compose command or those images. The
stack is taken down with its volumes afterwards, and every container's log
tail is printed (pytest shows it when the test failed).
"""

import json
import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

from services.gateway.auth import mint_token
from services.launcher.natsserver import free_port
from tests import servers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

T = TypeVar("T")
Job = dict[str, Any]
COMPOSE_FILE = servers.ROOT / "docker-compose.yml"
AGENTS = 3
JOBS = 6
SIM_LATENCY = 4.0  # seconds before the model's first token: jobs are in flight for a while
SECRET = f"compose-test-{uuid.uuid4().hex}"
UP_TIMEOUT = 420.0
TERMINAL = {"completed", "failed", "cancelled"}
# Only what the compose command itself needs: nothing of this machine's chatbus settings
# (a model key, a database URL) may leak into the stack's containers.
PASSED_ON = ("PATH", "HOME", "LANG", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH")


def compose_command() -> list[str] | None:
    """Find docker-compose (1.29) or the compose plugin of the docker client."""
    if binary := shutil.which("docker-compose"):
        return [binary]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return None


def why_not() -> str | None:
    """Tell why the compose stack cannot run here, or None."""
    if reason := servers.docker_answers():
        return reason
    if compose_command() is None:
        return "neither docker-compose nor the docker compose plugin is installed"
    images = servers.local_images()
    names = [images[key] for key in ("CHATBUS_IMAGE", "NATS_IMAGE", "REDIS_IMAGE")]
    names.append(images["POSTGRES_IMAGE"])
    if missing := [name for name in names if not servers.image_exists(name)]:
        return f"images {', '.join(missing)} not built (run docker/build-images.sh)"
    return None


@dataclass
class Stack:
    """One compose project of the whole stack."""

    compose: list[str]
    project: str
    env: dict[str, str]
    url: str

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        """Run a compose command on this project; return its output."""
        argv = [*self.compose, "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        done = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done.stdout + done.stderr

    def containers(self, service: str) -> list[str]:
        """Return the ids of the service's containers, running or not."""
        return self.run("ps", "-q", service).split()

    def logs(self, tail: int = 60) -> str:
        """Return the tail of every container's log."""
        return self.run("logs", "--no-color", f"--tail={tail}", check=False)

    def token(self, user: str) -> dict[str, str]:
        """Build the Authorization header of a user."""
        return {"Authorization": f"Bearer {mint_token(SECRET, user)}"}


def docker(*args: str) -> str:
    """Run a docker command; return its output."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout


def wait_until(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns a value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        time.sleep(0.5)
    raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """Bring the stack up with three agents; take it down with its volumes afterwards."""
    if reason := why_not():
        pytest.skip(reason)
    compose = compose_command()
    assert compose is not None
    port = free_port()
    env = {key: os.environ[key] for key in PASSED_ON if key in os.environ}
    env.update(
        servers.local_images(),
        GATEWAY_PUBLISH_ADDRESS="127.0.0.1",
        GATEWAY_PUBLISH_PORT=str(port),
        JWT_SECRET=SECRET,
        LLM_SIM_LATENCY=str(SIM_LATENCY),
        LLM_SIM_TOKENS_PER_SECOND="20",
        AGENT_ACK_WAIT="8",  # a dead agent's job goes to another replica within seconds
        MAX_ACTIVE_JOBS_PER_USER="50",
    )
    stack = Stack(compose, f"chatbus-e2e-{uuid.uuid4().hex[:8]}", env, f"http://127.0.0.1:{port}")
    try:
        stack.run("up", "-d", "--scale", f"agent={AGENTS}", timeout=UP_TIMEOUT)
        wait_until(lambda: ready(stack.url), 120, "the gateway's /readyz to answer 200")
        yield stack
    finally:
        print(stack.logs())  # shown when the test failed
        stack.run("down", "-v", "--remove-orphans", "--timeout", "10", timeout=180, check=False)


def ready(url: str) -> dict[str, str] | None:
    """Return /readyz's states once all are ok."""
    try:
        resp = httpx.get(f"{url}/readyz", timeout=5)
    except httpx.HTTPError:
        return None
    states: dict[str, str] = resp.json() if resp.status_code == 200 else {}
    return states or None


def container_log(container: str) -> str:
    """Return everything the container wrote (the services log JSON lines to stderr)."""
    done = subprocess.run(
        ["docker", "logs", container], capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout + done.stderr


def holder_of(agents: list[str], job_id: str) -> str | None:
    """Return the agent container whose log names the job, if any."""
    return next((agent for agent in agents if job_id in container_log(agent)), None)


def get_job(client: httpx.Client, auth: dict[str, str], job_id: str) -> Job | None:
    """Return the job, or None when the gateway cannot answer right now."""
    try:
        resp = client.get(f"/api/jobs/{job_id}", headers=auth)
    except httpx.HTTPError:
        return None
    job: Job | None = resp.json() if resp.status_code == 200 else None
    return job


def test_compose_stack_survives_a_killed_agent(stack: Stack) -> None:
    # Every one-shot and long-running service is as compose says it should be.
    assert len(stack.containers("agent")) == AGENTS
    (migrate,) = stack.containers("migrate")
    assert docker("inspect", "-f", "{{.State.ExitCode}}", migrate).strip() == "0"
    (gateway,) = stack.containers("gateway")
    wait_until(
        lambda: (
            "healthy" == docker("inspect", "-f", "{{.State.Health.Status}}", gateway).strip()
            or None
        ),
        60,
        "the gateway's health check",
    )
    assert set(ready(stack.url) or {}) == {"nats", "history", "memory", "agent"}

    auth = stack.token(f"compose-{uuid.uuid4().hex[:8]}")
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        sent: dict[str, tuple[str, str]] = {}  # job id: (session id, content)
        for n in range(JOBS):
            resp = client.post("/api/sessions", json={"persona": f"p{n}"}, headers=auth)
            assert resp.status_code == 201, resp.text
            session = resp.json()["id"]
            content = f"compose job {n}"
            resp = client.post(
                f"/api/sessions/{session}/messages",
                json={"content": content},
                headers={**auth, "Idempotency-Key": f"compose-{uuid.uuid4()}"},
            )
            assert resp.status_code == 202, resp.text
            sent[resp.json()["id"]] = (session, content)

        # Kill the agent running one of the jobs while its model call is still going on.
        agents = stack.containers("agent")
        victim_job, victim = wait_until(
            lambda: next(
                (
                    (job_id, holder)
                    for job_id in sent
                    if (job := get_job(client, auth, job_id)) and job["status"] == "running"
                    if (holder := holder_of(agents, job_id))
                ),
                None,
            ),
            60,
            "a running job and the agent holding it",
        )
        docker("kill", victim)

        def all_ended() -> dict[str, Job] | None:
            jobs = {job_id: get_job(client, auth, job_id) for job_id in sent}
            if all(job is not None and job["status"] in TERMINAL for job in jobs.values()):
                return {job_id: job for job_id, job in jobs.items() if job is not None}
            return None

        final = wait_until(all_ended, 180, f"{JOBS} jobs to end")
        context = json.dumps(final, indent=1)
        assert {job["status"] for job in final.values()} == {"completed"}, context
        assert final[victim_job]["attempts"] >= 2, context
        survivors = [agent for agent in agents if agent != victim]
        assert holder_of(survivors, victim_job), context

        for job_id, (session, content) in sent.items():
            resp = client.get(f"/api/sessions/{session}/messages", headers=auth)
            assert resp.status_code == 200, resp.text
            messages = [m for m in resp.json()["items"] if m["job_id"] == job_id]
            assert Counter(m["role"] for m in messages) == {"user": 1, "assistant": 1}, messages
            reply = next(m for m in messages if m["role"] == "assistant")
            assert reply["content"] == f"Echo: {content} (turn 1)", messages
            assert final[job_id]["reply"]["id"] == reply["id"], context
