"""Memories on real processes: a fact said in one session is recalled by a tool in the next."""

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.e2e.cluster import Cluster, running_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
T = TypeVar("T")
FACT = "I am allergic to peanuts"
MEMORY = f"The user said: {FACT}"
QUESTION = "what do you remember about peanuts"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path / "cluster") as started:
        yield started


def poll(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Return the first truthy value of ``check``, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if value := check():
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.2)


def ask(http: httpx.Client, session_id: str, content: str) -> dict[str, Any]:
    """Post a message and wait for its job to end."""
    answer = http.post(
        f"/api/sessions/{session_id}/messages", params={"wait": 30}, json={"content": content}
    )
    assert answer.status_code == 200, answer.text
    job: dict[str, Any] = answer.json()
    return job


def test_fact_from_an_archived_session_is_recalled_by_a_tool(cluster: Cluster) -> None:
    headers = cluster.headers("alice")
    with cluster.client() as http:
        http.headers.update(headers)
        first = http.post("/api/sessions", json={"persona": "friend"}).json()
        told = ask(http, first["id"], FACT)
        assert told["status"] == "completed" and told["tools"] == []

        second = http.post("/api/sessions", json={"persona": "friend"}).json()
        assert http.get(f"/api/sessions/{first['id']}").json()["status"] == "archived"

        def remembered() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = http.get("/api/memories").json()["items"]
            return [m for m in items if m["content"] == MEMORY]

        (memory,) = poll(remembered, 60, "the fact stored as a memory")
        assert memory["session_id"] == first["id"] and memory["persona"] == "friend"

        job = ask(http, second["id"], QUESTION)
        assert job["status"] == "completed", cluster.report()
        assert "recall_memories" in job["tools"]
        assert MEMORY in job["reply"]["content"]

        # Another user's recall finds nothing of alice's.
        http.headers.update(cluster.headers("bob"))
        bobs = http.post("/api/sessions", json={"persona": "friend"}).json()
        other = ask(http, bobs["id"], QUESTION)
        assert other["tools"] == ["recall_memories"]
        assert "peanuts]" not in other["reply"]["content"]
        assert other["reply"]["content"].endswith("[recall_memories: no memories found]")

    seen = httpx.get(f"http://127.0.0.1:{cluster.sim_port}/sim/requests", timeout=10).json()
    asked = [body for body in seen["items"] if QUESTION in str(body.get("messages"))]
    tool_results = [
        m["content"] for body in asked for m in body["messages"] if m.get("role") == "tool"
    ]
    assert f"- {MEMORY}" in tool_results
    assert "no memories found" in tool_results
