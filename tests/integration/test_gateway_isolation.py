"""Per-user isolation on the real stack: another user's resources answer 404, every endpoint.

The stack is the fault tests' :class:`tests.e2e.cluster.Cluster`: a private
nats-server, the simulated model, history (SQLite), memory, one agent and one
gateway, each its own process. Alice gets a session with messages, finished
and running jobs, and a memory; Bob then tries every endpoint on them. Each of
Bob's answers must be the 404 a missing resource gets, and Alice's data must
be unchanged; Bob's lists must hold only Bob's data.
"""

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.e2e.cluster import Cluster, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
T = TypeVar("T")
Json = dict[str, Any]


def poll(check: Callable[[], T | None], timeout: float, what: str, cluster: Cluster) -> T:
    """Return the first truthy value of ``check``; fail with the logs after ``timeout`` s."""
    return cluster.wait_until(check, timeout, what, interval=0.2)


@dataclass(frozen=True)
class Alice:
    """Alice's resources that Bob will go after."""

    session: str  # active, with a finished job
    archived: str  # archived, the source of her memory
    job: str  # finished
    slow_job: str  # still queued or running when Bob first tries it
    memory: str
    message: str


@dataclass
class World:
    cluster: Cluster
    alice_http: httpx.Client
    bob_http: httpx.Client
    alice: Alice
    bob_session: str
    bob_memory: str


def ask(http: httpx.Client, session: str, content: str, wait: float = 30) -> Json:
    answer = http.post(
        f"/api/sessions/{session}/messages", params={"wait": wait}, json={"content": content}
    )
    assert answer.status_code in (200, 202), answer.text
    job: Json = answer.json()
    return job


def new_session(http: httpx.Client, persona: str = "friend") -> str:
    answer = http.post("/api/sessions", json={"persona": persona})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def memories(http: httpx.Client, **params: str) -> list[Json]:
    answer = http.get("/api/memories", params={"limit": 200, **params})
    assert answer.status_code == 200, answer.text
    items: list[Json] = answer.json()["items"]
    return items


def remembered(cluster: Cluster, http: httpx.Client, session: str) -> str:
    """Wait until the memory service stored a memory from ``session``; return its id."""
    found = poll(
        lambda: [m for m in memories(http) if m["session_id"] == session],
        60,
        f"a memory from session {session}",
        cluster,
    )
    return str(found[0]["id"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("isolation")
    with running_cluster(root / "cluster") as cluster:
        base = {"base_url": cluster.url(), "timeout": 40}
        with (
            httpx.Client(headers=cluster.headers("alice"), **base) as alice_http,
            httpx.Client(headers=cluster.headers("bob"), **base) as bob_http,
        ):
            archived = new_session(alice_http)
            told = ask(alice_http, archived, "I am allergic to peanuts")
            assert told["status"] == "completed", cluster.report()
            session = new_session(alice_http)  # archives the first: memories follow
            job = ask(alice_http, session, "hello there")
            assert job["status"] == "completed", cluster.report()
            slow = ask(alice_http, session, "[sim:slow=4] take your time", wait=0)
            memory = remembered(cluster, alice_http, archived)

            bob_archived = new_session(bob_http)
            ask(bob_http, bob_archived, "I play chess on Sundays")
            bob_session = new_session(bob_http)
            bob_memory = remembered(cluster, bob_http, bob_archived)
            alice = Alice(
                session=session,
                archived=archived,
                job=job["id"],
                slow_job=slow["id"],
                memory=memory,
                message=told["reply"]["id"],
            )
            yield World(cluster, alice_http, bob_http, alice, bob_session, bob_memory)


def alice_state(world: World) -> Json:
    """Return what Bob must not be able to change: Alice's sessions, messages, jobs, memories."""
    http, a = world.alice_http, world.alice
    return {
        "session": http.get(f"/api/sessions/{a.session}").json(),
        "archived": http.get(f"/api/sessions/{a.archived}").json(),
        "messages": http.get(f"/api/sessions/{a.session}/messages").json()["items"],
        "job": http.get(f"/api/jobs/{a.job}").json(),
        "slow_job_cancelled": http.get(f"/api/jobs/{a.slow_job}").json()["status"]
        == "cancelled",
        "memories": [m["id"] for m in memories(http)],
    }


def stable(state: Json) -> Json:
    """Drop what moves on its own (the slow job's replies land in the session meanwhile)."""
    moving = ("updated_at", "message_count")
    session = {k: v for k, v in state["session"].items() if k not in moving}
    user_messages = [m["id"] for m in state["messages"] if m["role"] == "user"]
    return {**state, "session": session, "messages": user_messages}


ENDPOINTS = [
    ("GET", "/api/sessions/{session}", None),
    ("GET", "/api/sessions/{archived}", None),
    ("POST", "/api/sessions/{session}/archive", None),
    ("DELETE", "/api/sessions/{session}", None),
    ("DELETE", "/api/sessions/{archived}", None),
    ("GET", "/api/sessions/{session}/messages", None),
    ("POST", "/api/sessions/{session}/messages", {"content": "I am Alice now"}),
    ("GET", "/api/jobs/{job}", None),
    ("GET", "/api/jobs/{slow_job}", None),
    ("GET", "/api/jobs/{job}/events", None),
    ("GET", "/api/jobs/{slow_job}/events", None),
    ("POST", "/api/jobs/{slow_job}/cancel", None),
    ("POST", "/api/jobs/{job}/cancel", None),
    ("DELETE", "/api/memories/{memory}", None),
]


@pytest.mark.parametrize(
    ("method", "template", "body"), ENDPOINTS, ids=[f"{m} {t}" for m, t, _ in ENDPOINTS]
)
def test_another_users_resource_is_404_and_untouched(
    world: World, method: str, template: str, body: Json | None
) -> None:
    before = alice_state(world)
    ids = vars(world.alice)
    url = template.format(**ids)
    # The same path with an id nobody has: Bob's answer must not tell the two apart.
    missing_ids = {name: str(uuid.uuid4()) for name in ids}
    missing_url = template.format(**missing_ids)

    answer = world.bob_http.request(method, url, json=body)
    missing = world.bob_http.request(method, missing_url, json=body)

    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert (missing.status_code, missing.json()["detail"]) == (404, answer.json()["detail"])
    after = alice_state(world)
    assert stable(after) == stable(before)
    assert after["session"]["status"] == "active"
    assert world.alice.memory in after["memories"]
    assert not after["slow_job_cancelled"]


def test_bobs_history_and_memories_hold_only_his_own(world: World) -> None:
    bob, alice = world.bob_http, world.alice
    feed = bob.get("/api/history", params={"limit": 200}).json()["items"]
    sessions = bob.get("/api/sessions", params={"limit": 200}).json()["items"]
    own = {s["id"] for s in sessions}
    assert feed and own
    assert {m["session_id"] for m in feed} <= own
    assert alice.session not in own and alice.archived not in own
    assert alice.message not in {m["id"] for m in feed}
    assert not any("peanuts" in m["content"] for m in feed)
    assert [m["id"] for m in memories(bob)] == [world.bob_memory]
    assert memories(bob, q="peanuts") == []
    assert memories(bob, persona="friend", q="chess")[0]["id"] == world.bob_memory
    # And the other way round.
    alices = memories(world.alice_http)
    assert world.bob_memory not in {m["id"] for m in alices}
    assert alice.memory in {m["id"] for m in alices}
    alice_feed = world.alice_http.get("/api/history", params={"limit": 200}).json()["items"]
    assert not {m["session_id"] for m in alice_feed} & own


def test_alices_slow_job_ends_as_she_left_it(world: World) -> None:
    http = world.alice_http
    final = poll(
        lambda: (job := http.get(f"/api/jobs/{world.alice.slow_job}").json())["status"]
        in ("completed", "failed", "cancelled")
        and job,
        60,
        "alice's slow job to end",
        world.cluster,
    )
    assert final["status"] == "completed", world.cluster.report()
