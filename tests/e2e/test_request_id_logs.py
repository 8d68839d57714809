"""One chat message through the real processes: its request id in every log, metrics everywhere."""

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts import subjects
from services.launcher.natsserver import free_port
from tests.e2e.cluster import Cluster, running_cluster

pytestmark = pytest.mark.e2e
SERVICES = ("gateway-1", "history", "memory", "agent-1")


@dataclass
class Chatted:
    """A running stack after one chat message (and its session's archive)."""

    cluster: Cluster
    request_id: str
    job: dict[str, Any]
    metrics_ports: dict[str, int]

    def records(self, name: str) -> list[dict[str, Any]]:
        """Return the JSON log records of a process."""
        return [
            json.loads(line) for line in self.cluster.log_lines(name) if line.startswith("{")
        ]

    def with_request_id(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """Return a process's records carrying the request id (and ``fields``)."""
        return [
            r for r in self.records(name)
            if r.get("request_id") == self.request_id
            and all(r.get(k) == v for k, v in fields.items())
        ]

    def metrics(self, name: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Scrape a process's metrics endpoint: sample name and labels → value."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_ports[name]}/metrics", timeout=5).text
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    """Return the sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and wanted <= ls]
    assert found, f"no {name} sample with {labels}"
    return sum(found)


@pytest.fixture(scope="module")
def chatted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatted]:
    ports: dict[str, int] = {}

    def metrics_port(name: str) -> dict[str, str]:
        if name not in SERVICES:
            return {}
        ports[name] = free_port()
        return {"METRICS_PORT": str(ports[name])}

    root: Path = tmp_path_factory.mktemp("observed")
    with running_cluster(root, proc_env=metrics_port, sim_tokens_per_second=200) as cluster:
        request_id = f"e2e-{uuid.uuid4().hex}"
        with cluster.client() as http:
            auth = cluster.headers("observed-user")
            session = http.post("/api/sessions", json={"persona": "default"}, headers=auth)
            assert session.status_code == 201, session.text
            session_id = session.json()["id"]
            posted = http.post(
                f"/api/sessions/{session_id}/messages",
                params={"wait": 30},
                json={"content": "I like observable systems"},
                headers={**auth, "X-Request-ID": request_id},
            )
            assert posted.status_code == 200, posted.text
            assert posted.headers["X-Request-ID"] == request_id
            job = posted.json()
            assert job["status"] == "completed", job
            archived = http.post(f"/api/sessions/{session_id}/archive", headers=auth)
            assert archived.status_code == 202, archived.text
        yield Chatted(cluster, request_id, job, ports)


def test_the_request_id_reaches_the_logs_of_every_service_on_its_way(chatted: Chatted) -> None:
    cluster = chatted.cluster
    # The agent logs the completion just after the job's state is written: wait for it.
    cluster.wait_until(
        lambda: chatted.with_request_id("agent-1", event="job completed"), 20,
        "the agent's 'job completed' line with the request id",
    )
    access = chatted.with_request_id("gateway-1", event="request handled")
    assert [r["route"] for r in access] == ["/api/sessions/{session_id}/messages"], access
    assert access[0]["status"] == 200
    # The agent's context read and reply store carry the job's request id to history, and its
    # memory recall to memory: only the agent sends those two requests.
    assert chatted.with_request_id("history", subject=subjects.HISTORY_MESSAGE_LIST)
    assert chatted.with_request_id("history", subject=subjects.HISTORY_MESSAGE_APPEND)
    assert chatted.with_request_id("memory", subject=subjects.MEMORY_RECALL)
    started = chatted.with_request_id("agent-1", event="job started")
    assert [r["job_id"] for r in started] == [chatted.job["id"]]


def test_every_service_serves_its_metrics(chatted: Chatted) -> None:
    cluster = chatted.cluster
    cluster.wait_until(
        lambda: ("chatbus_llm_call_duration_seconds_count", frozenset(
            {("model", "chatbus-sim"), ("outcome", "ok")}
        )) in chatted.metrics("memory"),
        30, "memory's model call for the archived session",
    )
    asyncio.run(_send_garbage(cluster))

    gateway = chatted.metrics("gateway-1")
    route = "/api/sessions/{session_id}/messages"
    assert value(gateway, "chatbus_gateway_http_request_duration_seconds_count", route=route) == 1
    assert value(
        gateway, "chatbus_bus_request_duration_seconds_count",
        subject=subjects.HISTORY_MESSAGE_APPEND, outcome="ok",
    ) >= 1

    agent = chatted.metrics("agent-1")
    assert value(agent, "chatbus_agent_jobs_total", status="completed") == 1
    assert ("chatbus_agent_redeliveries_total", frozenset()) in agent
    assert value(agent, "chatbus_llm_time_to_first_token_seconds_count") == 1
    assert value(agent, "chatbus_llm_call_duration_seconds_count", outcome="ok") == 1
    assert value(agent, "chatbus_llm_tokens_total", kind="prompt") > 0
    assert value(agent, "chatbus_llm_tokens_total", kind="completion") > 0
    assert value(
        agent, "chatbus_bus_request_duration_seconds_count",
        subject=subjects.HISTORY_MESSAGE_LIST, outcome="ok",
    ) == 1
    assert not any(subjects.CHAT_JOB_PREFIX in str(labels) for _, labels in agent)

    history = chatted.metrics("history")
    assert value(
        history, "chatbus_received_processed_messages_duration_seconds_count",
        handler=subjects.HISTORY_MESSAGE_APPEND,
    ) >= 2
    assert value(history, "chatbus_cache_misses_total") >= 1
    # History announces the admitted job from its outbox.
    assert value(
        history, "chatbus_published_messages_total",
        destination=subjects.CHAT_REQUESTED, status="success",
    ) == 1
    assert value(history, "chatbus_dead_letters_total", subject=subjects.HISTORY_SESSION_GET) == 1

    memory = chatted.metrics("memory")
    assert value(
        memory, "chatbus_received_processed_messages_duration_seconds_count",
        handler=subjects.MEMORY_RECALL,
    ) == 1
    assert value(memory, "chatbus_llm_tokens_total", kind="completion") > 0


async def _send_garbage(cluster: Cluster) -> None:
    """Ask history something that is not a request: it answers ``invalid`` and dead-letters it."""
    nc = await nats.connect(f"nats://127.0.0.1:{cluster.nats_port}")
    try:
        await nc.request(subjects.HISTORY_SESSION_GET, b"not json", timeout=10)
    finally:
        await nc.close()
