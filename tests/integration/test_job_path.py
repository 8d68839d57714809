"""The job path end to end in one process: bus round trips, replay of events, interleaving."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.job_stack import job_stack

pytestmark = pytest.mark.integration
POST_BUDGET = 5  # bus round trips of a POST before its 202
AGENT_BUDGET = 8  # bus round trips of a job in the agent (acks included, pull requests not)


@dataclass(frozen=True)
class Event:
    """One server-sent event."""

    name: str
    id: str
    data: Any


async def read_events(response: httpx.Response) -> AsyncIterator[Event]:
    """Parse a text/event-stream response into events (comments skipped)."""
    name, event_id, data = "message", "", []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield Event(name, event_id, json.loads("\n".join(data)))
            name, event_id, data = "message", "", []
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            name = value
        elif key == "id":
            event_id = value
        elif key == "data":
            data.append(value)


async def new_session(http: httpx.AsyncClient, base: str, auth: dict[str, str]) -> str:
    created = await http.post(f"{base}/api/sessions", json={"persona": "p"}, headers=auth)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def test_a_chat_message_stays_within_its_round_trip_budget(tmp_path: Path) -> None:
    async with job_stack(tmp_path) as stack, httpx.AsyncClient(timeout=30) as http:
        auth, base = stack.token("budget"), stack.gateways[0]
        session = await new_session(http, base, auth)
        url = f"{base}/api/sessions/{session}/messages"
        first = await http.post(url, params={"wait": 20}, json={"content": "one"}, headers=auth)
        assert first.json()["status"] == "completed"
        await asyncio.sleep(0.3)  # the first job's ack follows its final state
        gateway, agent = stack.counters["gateway-0"], stack.counters["agent"]

        before_post, before_job = gateway.mark(), agent.mark()
        posted = await http.post(url, json={"content": "two"}, headers=auth)
        post_trips = gateway.since(before_post, "request", "ack")
        assert posted.status_code == 202, posted.text
        job_id = posted.json()["id"]
        done = await http.get(f"{base}/api/jobs/{job_id}", headers=auth)
        while done.json()["status"] not in ("completed", "failed", "cancelled"):
            await asyncio.sleep(0.05)
            done = await http.get(f"{base}/api/jobs/{job_id}", headers=auth)
        await asyncio.sleep(0.3)  # the ack follows the final state
        job_trips = agent.since(before_job, "request", "ack")

    assert done.json()["reply"]["content"] == "Echo: two (turn 2)"
    assert len(post_trips) <= POST_BUDGET, post_trips
    assert len(job_trips) <= AGENT_BUDGET, "\n".join(job_trips)
    # Each has its reason: the record, the admission; start, context, memories, reply,
    # final state, final event, ack.
    assert sorted(post_trips) == sorted(["$KV.chat_jobs." + job_id, "history.message.append"])
    assert "history.message.list" in job_trips and "memory.recall" in job_trips


async def test_a_stream_resumed_on_another_replica_misses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    words = [f"w{i}" for i in range(196)]  # the echo is 199 words: one delta each
    content = " ".join(words)
    async with (
        job_stack(tmp_path, tokens_per_second=40, agent={"agent_delta_interval": 0}) as stack,
        httpx.AsyncClient(timeout=30) as http,
    ):
        auth = stack.token("replay")
        one, other = stack.gateways
        session = await new_session(http, one, auth)
        posted = await http.post(
            f"{one}/api/sessions/{session}/messages", json={"content": content}, headers=auth
        )
        job_id = posted.json()["id"]
        seen: list[Event] = []
        async with http.stream("GET", f"{one}/api/jobs/{job_id}/events", headers=auth) as first:
            async for event in read_events(first):
                seen.append(event)
                if sum(e.name == "delta" for e in seen) == 100:
                    break  # the client goes away half way through the reply
        await asyncio.sleep(5)
        resumed: list[Event] = []
        headers = {**auth, "Last-Event-ID": seen[-1].id}
        async with http.stream(
            "GET", f"{other}/api/jobs/{job_id}/events", headers=headers
        ) as second:
            async for event in read_events(second):
                resumed.append(event)

    expected = f"Echo: {content} (turn 1)"
    deltas = [e for e in [*seen, *resumed] if e.name == "delta"]
    assert "".join(e.data["text"] for e in deltas) == expected
    assert len(deltas) == len(expected.split())  # every delta once
    ids = [int(e.id) for e in [*seen, *resumed] if e.id != "0"]
    assert ids == sorted(set(ids))  # in order, nothing repeated
    assert resumed[-1].name == "completed"
    assert resumed[-1].data["reply"]["content"] == expected
    assert all(e.name == "delta" for e in resumed[:-1])


async def test_two_gateways_admitting_50_messages_get_them_answered_in_order(
    tmp_path: Path,
) -> None:
    agent = {"agent_context_messages": 120, "agent_context_tokens": 20_000}
    gateway = {"max_active_jobs_per_user": 60, "max_messages_per_minute": 0}
    async with (
        job_stack(tmp_path, agent=agent, gateway=gateway) as stack,
        httpx.AsyncClient(timeout=60) as http,
    ):
        auth = stack.token("interleave")
        session = await new_session(http, stack.gateways[0], auth)

        async def post(index: int) -> httpx.Response:
            base = stack.gateways[index % 2]
            return await http.post(
                f"{base}/api/sessions/{session}/messages",
                json={"content": f"m{index}"}, headers=auth,
            )

        posted = await asyncio.gather(*(post(i) for i in range(50)))
        assert [p.status_code for p in posted] == [202] * 50
        jobs = {p.json()["id"] for p in posted}
        deadline = time.monotonic() + 60
        while True:
            states = [
                (await http.get(f"{stack.gateways[0]}/api/jobs/{j}", headers=auth)).json()
                for j in jobs
            ]
            if all(s["status"] == "completed" for s in states) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        listed = await http.get(
            f"{stack.gateways[1]}/api/sessions/{session}/messages", params={"limit": 200},
            headers=auth,
        )
        async with httpx.AsyncClient() as sim:
            prompts = (await sim.get(f"{stack.sim_url.removesuffix('/v1')}/sim/requests")).json()

    assert [s["status"] for s in states] == ["completed"] * 50
    messages = list(reversed(listed.json()["items"]))  # oldest first: admission order
    users = [m for m in messages if m["role"] == "user"]
    replies = {m["job_id"]: m for m in messages if m["role"] == "assistant"}
    assert len(users) == 50 and len(replies) == 50  # each answered once
    by_job = {s["id"]: s for s in states}
    for turn, user in enumerate(users, start=1):
        state = by_job[user["job_id"]]
        assert state["reply"]["content"] == f"Echo: {user['content']} (turn {turn})"
        if turn > 1:
            earlier = by_job[users[turn - 2]["job_id"]]
            assert state["started_at"] >= earlier["finished_at"]  # in admission order
    # Each model call saw every earlier reply of the session.
    for body in prompts["items"]:
        said = [m["content"] for m in body["messages"] if m["role"] == "assistant"]
        asked = [m["content"] for m in body["messages"] if m["role"] == "user"]
        assert said == [replies[u["job_id"]]["content"] for u in users[: len(asked) - 1]]
