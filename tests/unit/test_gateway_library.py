"""Archive, delete, the history feed and memories through the gateway over an in-memory bus."""

import uuid

import httpx
import pytest

from contracts import subjects
from contracts.chat import JobState
from services.runtime.meta import BusTimeout
from tests.unit.test_gateway_fakes import FakeBus, bearer, gateway_client

MEMORY_FIELDS = {"id", "session_id", "persona", "content", "created_at"}


async def new_session(client: httpx.AsyncClient, user: str = "alice", persona: str = "p") -> str:
    response = await client.post("/api/sessions", json={"persona": persona}, headers=bearer(user))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def say(client: httpx.AsyncClient, sid: str, content: str, user: str = "alice") -> str:
    response = await client.post(
        f"/api/sessions/{sid}/messages", json={"content": content}, headers=bearer(user)
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def job(bus: FakeBus, job_id: str) -> JobState:
    return bus.jobs[uuid.UUID(job_id)]


async def test_archive_answers_202_and_a_repeat_changes_nothing() -> None:
    async with gateway_client() as (client, _):
        sid = await new_session(client)
        first = await client.post(f"/api/sessions/{sid}/archive", headers=bearer())
        again = await client.post(f"/api/sessions/{sid}/archive", headers=bearer())
        read = await client.get(f"/api/sessions/{sid}", headers=bearer())
        posted = await client.post(
            f"/api/sessions/{sid}/messages", json={"content": "hi"}, headers=bearer()
        )
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == sid and first.json()["status"] == "archived"
    assert first.json()["archived_at"] is not None
    assert "user_id" not in first.json()
    assert again.json() == first.json() == read.json()
    assert posted.status_code == 409


async def test_archive_of_a_missing_or_foreign_session_is_404() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        foreign = await client.post(f"/api/sessions/{sid}/archive", headers=bearer("mallory"))
        missing = await client.post(f"/api/sessions/{uuid.uuid4()}/archive", headers=bearer())
    assert foreign.status_code == missing.status_code == 404
    assert foreign.headers["content-type"] == "application/problem+json"
    assert bus.history.sessions[uuid.UUID(sid)].status == "active"


async def test_delete_answers_204_without_a_body_and_the_session_is_gone() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        await say(client, sid, "hello")
        deleted = await client.delete(f"/api/sessions/{sid}", headers=bearer())
        read = await client.get(f"/api/sessions/{sid}", headers=bearer())
        messages = await client.get(f"/api/sessions/{sid}/messages", headers=bearer())
        again = await client.delete(f"/api/sessions/{sid}", headers=bearer())
    assert deleted.status_code == 204
    assert deleted.content == b"" and "content-type" not in deleted.headers
    assert deleted.headers["x-request-id"]
    assert read.status_code == messages.status_code == again.status_code == 404
    assert bus.history.sessions == {}


async def test_delete_of_a_missing_or_foreign_session_is_404_and_cancels_nothing() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        queued = await say(client, sid, "hi")
        foreign = await client.delete(f"/api/sessions/{sid}", headers=bearer("mallory"))
        missing = await client.delete(f"/api/sessions/{uuid.uuid4()}", headers=bearer())
        read = await client.get(f"/api/sessions/{sid}", headers=bearer())
    assert foreign.status_code == missing.status_code == 404
    assert read.status_code == 200
    assert job(bus, queued).status == "queued"
    assert bus.cancels == {}


async def test_delete_asks_to_cancel_the_sessions_unfinished_jobs() -> None:
    bus = FakeBus()
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        other = await new_session(client, persona="q")
        done = await say(client, sid, "zero")
        bus.finish(uuid.UUID(done))
        running, queued = await say(client, sid, "one"), await say(client, sid, "two")
        elsewhere = await say(client, other, "three")
        bus.start(uuid.UUID(running))
        bus.ops.clear()
        deleted = await client.delete(f"/api/sessions/{sid}", headers=bearer())
    assert deleted.status_code == 204
    assert set(bus.cancels) == {uuid.UUID(running), uuid.UUID(queued)}
    assert {c.user_id for c in bus.cancels.values()} == {"alice"}
    # The jobs history named are asked to stop: the agent ends them, not the gateway.
    assert bus.ops == [subjects.HISTORY_SESSION_DELETE, "request_cancel", "request_cancel"]
    assert job(bus, running).status == "running" and job(bus, queued).status == "queued"
    assert job(bus, done).status == "completed" and job(bus, elsewhere).status == "queued"


async def test_history_silent_during_delete_answers_504_and_cancels_nothing() -> None:
    bus = FakeBus(failures={subjects.HISTORY_SESSION_DELETE: BusTimeout("no answer")})
    async with gateway_client(bus) as (client, _):
        sid = await new_session(client)
        await say(client, sid, "hi")
        deleted = await client.delete(f"/api/sessions/{sid}", headers=bearer())
    assert deleted.status_code == 504
    assert bus.cancels == {}
    assert uuid.UUID(sid) in bus.history.sessions


async def test_history_feed_lists_all_sessions_newest_first_in_pages() -> None:
    async with gateway_client() as (client, _):
        first, second = await new_session(client), await new_session(client, persona="q")
        for n, sid in enumerate([first, second, first, second, first]):
            await say(client, sid, f"m{n}")
        await say(client, await new_session(client, "bob"), "not alice's", user="bob")
        pages, cursor = [], None
        while True:
            query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
            response = await client.get(f"/api/history{query}", headers=bearer())
            assert response.status_code == 200, response.text
            pages.append(response.json()["items"])
            if (cursor := response.json()["next_cursor"]) is None:
                break
    assert [len(page) for page in pages] == [2, 2, 1]
    items = [m for page in pages for m in page]
    assert [m["content"] for m in items] == ["m4", "m3", "m2", "m1", "m0"]
    assert [m["session_id"] for m in items] == [first, second, first, second, first]
    assert set(items[0]) == {"id", "session_id", "role", "content", "created_at", "job_id"}


@pytest.mark.parametrize("path", ["/api/history", "/api/memories"])
@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=x", "cursor=bogus"])
async def test_bad_limit_or_cursor_answers_422(path: str, query: str) -> None:
    async with gateway_client() as (client, _):
        response = await client.get(f"{path}?{query}", headers=bearer())
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    [error] = response.json()["errors"]
    assert error["loc"] == ["query", query.split("=")[0]]


async def test_history_and_memories_need_a_token() -> None:
    async with gateway_client() as (client, _):
        for method, url in [
            ("GET", "/api/history"),
            ("GET", "/api/memories"),
            ("DELETE", f"/api/memories/{uuid.uuid4()}"),
            ("POST", f"/api/sessions/{uuid.uuid4()}/archive"),
            ("DELETE", f"/api/sessions/{uuid.uuid4()}"),
        ]:
            response = await client.request(method, url)
            assert response.status_code == 401, url


async def test_memories_list_filters_and_pages() -> None:
    bus = FakeBus()
    sid, other = uuid.uuid4(), uuid.uuid4()
    tea = bus.memory.add("alice", sid, "friend", "Likes green TEA")
    name = bus.memory.add("alice", sid, "friend", "Is called Ada")
    coach = bus.memory.add("alice", other, "coach", "Runs 5k, drinks tea after")
    bus.memory.add("mallory", other, "friend", "Mallory's tea")
    async with gateway_client(bus) as (client, _):
        everything = await client.get("/api/memories", headers=bearer())
        first = await client.get("/api/memories?limit=2", headers=bearer())
        rest = await client.get(
            f"/api/memories?limit=2&cursor={first.json()['next_cursor']}", headers=bearer()
        )
        by_persona = await client.get("/api/memories?persona=friend", headers=bearer())
        by_text = await client.get("/api/memories?q=tea", headers=bearer())
        both = await client.get("/api/memories?q=tea&persona=friend", headers=bearer())
        bad_persona = await client.get("/api/memories?persona=no%20spaces", headers=bearer())
    ids = [m["id"] for m in everything.json()["items"]]
    assert ids == [str(coach.id), str(name.id), str(tea.id)]
    assert everything.json()["next_cursor"] is None
    assert set(everything.json()["items"][0]) == MEMORY_FIELDS
    assert everything.json()["items"][0]["session_id"] == str(other)
    assert [m["id"] for m in first.json()["items"] + rest.json()["items"]] == ids
    assert rest.json()["next_cursor"] is None
    assert [m["id"] for m in by_persona.json()["items"]] == [str(name.id), str(tea.id)]
    assert [m["id"] for m in by_text.json()["items"]] == [str(coach.id), str(tea.id)]
    assert [m["id"] for m in both.json()["items"]] == [str(tea.id)]
    assert bad_persona.status_code == 422


async def test_delete_memory_answers_204_and_404_across_users() -> None:
    bus = FakeBus()
    mine = bus.memory.add("alice", uuid.uuid4(), "friend", "Likes tea")
    theirs = bus.memory.add("mallory", uuid.uuid4(), "friend", "Likes coffee")
    async with gateway_client(bus) as (client, _):
        foreign = await client.delete(f"/api/memories/{theirs.id}", headers=bearer())
        deleted = await client.delete(f"/api/memories/{mine.id}", headers=bearer())
        again = await client.delete(f"/api/memories/{mine.id}", headers=bearer())
        listed = await client.get("/api/memories", headers=bearer())
        malformed = await client.delete("/api/memories/not-a-uuid", headers=bearer())
    assert foreign.status_code == again.status_code == 404
    assert foreign.headers["content-type"] == "application/problem+json"
    assert deleted.status_code == 204 and deleted.content == b""
    assert listed.json()["items"] == []
    assert theirs.id in bus.memory.memories
    assert malformed.status_code == 422


async def test_memory_service_silent_answers_504() -> None:
    bus = FakeBus(failures={subjects.MEMORY_RECALL: BusTimeout("no answer")})
    async with gateway_client(bus) as (client, _):
        timed_out = await client.get("/api/memories", headers=bearer())
    assert timed_out.status_code == 504
    assert timed_out.headers["content-type"] == "application/problem+json"


async def test_openapi_documents_the_new_routes() -> None:
    async with gateway_client() as (client, _):
        spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    archive = paths["/api/sessions/{session_id}/archive"]["post"]["responses"]
    delete = paths["/api/sessions/{session_id}"]["delete"]["responses"]
    history = paths["/api/history"]["get"]
    memories = paths["/api/memories"]["get"]
    forget = paths["/api/memories/{memory_id}"]["delete"]["responses"]
    assert archive["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/SessionRead"
    )
    assert "content" not in delete["204"] and "content" not in forget["204"]
    for responses in (archive, delete, forget):
        assert {"401", "404", "422", "503", "504"} <= responses.keys()
        assert set(responses["404"]["content"]) == {"application/problem+json"}
    assert {"401", "422", "503"} <= history["responses"].keys()
    assert {p["name"] for p in history["parameters"]} == {"limit", "cursor"}
    assert {p["name"] for p in memories["parameters"]} == {"persona", "q", "limit", "cursor"}
    assert set(spec["components"]["schemas"]["MemoryRead"]["properties"]) == MEMORY_FIELDS
