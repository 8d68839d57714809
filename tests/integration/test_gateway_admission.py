"""Posting messages through two gateway replicas to the real history: jobs, limits, cancels."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client

from contracts import subjects
from contracts.base import utcnow
from contracts.chat import JobState, RequestChat
from contracts.history import MessageRecord
from services.history.app import create_app as create_history
from tests.integration.job_stack import JobStack, job_stack
from tests.streams import eventually, stream_messages

pytestmark = pytest.mark.integration
JOBS = subjects.CHAT_JOBS_STREAM.name
WAIT = 20


@pytest.fixture
async def manual(tmp_path: Path) -> AsyncIterator[tuple[JobStack, Client]]:
    """The stack without an agent: the test takes and ends jobs by hand."""
    gateway = {"max_active_jobs_per_user": 8, "max_messages_per_minute": 3}
    async with job_stack(tmp_path, with_agent=False, gateway=gateway) as stack:
        nc = await nats.connect(stack.nats_url)
        try:
            yield stack, nc
        finally:
            await nc.close()


async def session_of(http: httpx.AsyncClient, stack: JobStack, user: str) -> str:
    created = await http.post(
        f"{stack.gateways[0]}/api/sessions", json={"persona": "p"}, headers=stack.token(user)
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def requests_in(nc: Client) -> list[tuple[RequestChat, dict[str, str]]]:
    found = await stream_messages(nc.jetstream(), JOBS, subjects.CHAT_REQUESTED)
    return [(RequestChat.model_validate_json(m.data), dict(m.headers or {})) for m in found]


async def eventually_requests(nc: Client, count: int) -> list[tuple[RequestChat, dict[str, str]]]:
    found = await eventually(lambda: requests_in(nc), lambda found: len(found) >= count, WAIT)
    assert len(found) >= count, found
    return found


async def job_keys(nc: Client) -> list[str]:
    kv = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    try:
        return list(await kv.keys())
    except nats.js.errors.NoKeysError:
        return []


async def test_a_posted_message_is_stored_and_queued_by_history(
    manual: tuple[JobStack, Client],
) -> None:
    stack, nc = manual
    async with httpx.AsyncClient(timeout=WAIT) as http:
        sid = await session_of(http, stack, "alice")
        posted = await http.post(
            f"{stack.gateways[1]}/api/sessions/{sid}/messages", json={"content": "queued?"},
            headers={**stack.token("alice"), "X-Request-ID": "adm-1"},
        )
        assert posted.status_code == 202, posted.text
        job = posted.json()
        listed = await http.get(
            f"{stack.gateways[0]}/api/sessions/{sid}/messages", headers=stack.token("alice")
        )
        polled = await http.get(
            f"{stack.gateways[0]}/api/jobs/{job['id']}", headers=stack.token("alice")
        )
    [(request, headers)] = await eventually_requests(nc, 1)
    assert str(request.job_id) == job["id"] and str(request.session_id) == sid
    assert request.content == "queued?" and request.follows is None and request.revision > 0
    assert headers["Nats-Msg-Id"] == job["id"]
    assert headers[subjects.HEADER_REQUEST_ID] == "adm-1"
    assert headers[subjects.HEADER_USER_ID] == "alice"
    [stored] = listed.json()["items"]  # in history as soon as the 202 is returned
    assert stored["id"] == str(request.message_id) and stored["role"] == "user"
    assert polled.json()["status"] == "queued"


async def test_wait_answers_200_once_the_job_ends(manual: tuple[JobStack, Client]) -> None:
    stack, nc = manual

    async def agent() -> None:
        [(request, _)] = await eventually_requests(nc, 1)
        kv = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
        entry = await kv.get(str(request.job_id))
        assert entry.value is not None
        reply = MessageRecord(
            id=uuid.uuid4(), session_id=request.session_id, user_id=request.user_id,
            role="assistant", content="by hand", created_at=utcnow(), job_id=request.job_id,
        )
        done = JobState.model_validate_json(entry.value).model_copy(update={
            "status": "completed", "reply": reply, "attempts": 1, "finished_at": utcnow(),
        })
        await kv.update(str(request.job_id), done.model_dump_json().encode(), entry.revision)

    async with httpx.AsyncClient(timeout=WAIT) as http:
        sid = await session_of(http, stack, "alice")
        worker = asyncio.create_task(agent())
        posted = await http.post(
            f"{stack.gateways[0]}/api/sessions/{sid}/messages", params={"wait": 10},
            json={"content": "hi"}, headers=stack.token("alice"),
        )
        await worker
    assert posted.status_code == 200, posted.text
    assert posted.json()["status"] == "completed"
    assert posted.json()["reply"]["content"] == "by hand"


async def test_one_idempotency_key_sent_20_times_at_once_queues_one_job(
    manual: tuple[JobStack, Client],
) -> None:
    stack, nc = manual
    async with httpx.AsyncClient(timeout=WAIT) as http:
        sid = await session_of(http, stack, "alice")
        headers = {**stack.token("alice"), "Idempotency-Key": "twenty"}
        answers = await asyncio.gather(*(
            http.post(
                f"{stack.gateways[i % 2]}/api/sessions/{sid}/messages",
                json={"content": "only once"}, headers=headers,
            )
            for i in range(20)
        ))
        listed = await http.get(
            f"{stack.gateways[0]}/api/sessions/{sid}/messages", headers=stack.token("alice")
        )
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    await asyncio.sleep(0.5)  # a second chat.requested would be in the stream by now
    assert len(await eventually_requests(nc, 1)) == 1
    assert len(listed.json()["items"]) == 1


async def test_the_per_minute_limit_holds_across_replicas_and_refusals_leave_nothing(
    manual: tuple[JobStack, Client],
) -> None:
    stack, nc = manual  # 3 messages a minute, whichever replica takes them
    async with httpx.AsyncClient(timeout=WAIT) as http:
        sid = await session_of(http, stack, "rate")
        answers = await asyncio.gather(*(
            http.post(
                f"{stack.gateways[i % 2]}/api/sessions/{sid}/messages",
                json={"content": f"m{i}"}, headers=stack.token("rate"),
            )
            for i in range(5)
        ))
    codes = sorted(a.status_code for a in answers)
    refused = [a for a in answers if a.status_code == 429]
    assert codes == [202, 202, 202, 429, 429], [a.text for a in answers]
    assert all(1 <= int(a.headers["retry-after"]) <= 60 for a in refused)
    assert refused[0].headers["content-type"] == "application/problem+json"
    assert len(await eventually_requests(nc, 3)) == 3
    assert len(await job_keys(nc)) == 3  # the refused jobs' records were deleted


async def test_the_job_limit_holds_across_replicas(tmp_path: Path) -> None:
    gateway = {"max_active_jobs_per_user": 8, "max_messages_per_minute": 0}
    async with (
        job_stack(tmp_path, with_agent=False, gateway=gateway) as stack,
        httpx.AsyncClient(timeout=WAIT) as http,
    ):
        sid = await session_of(http, stack, "busy")
        answers = await asyncio.gather(*(
            http.post(
                f"{stack.gateways[i % 2]}/api/sessions/{sid}/messages",
                json={"content": f"m{i}"}, headers=stack.token("busy"),
            )
            for i in range(9)
        ))
        nc = await nats.connect(stack.nats_url)
        try:
            queued = await eventually_requests(nc, 8)
            keys = await job_keys(nc)
        finally:
            await nc.close()
    assert sorted(a.status_code for a in answers) == [202] * 8 + [429]
    [refused] = [a for a in answers if a.status_code == 429]
    assert int(refused.headers["retry-after"]) >= 1
    assert len(queued) == 8 and len(keys) == 8


async def test_without_history_a_post_is_503_and_leaves_nothing(tmp_path: Path) -> None:
    async with (
        job_stack(tmp_path, with_agent=False, with_history=False) as stack,
        httpx.AsyncClient(timeout=WAIT) as http,
    ):
        posted = await http.post(
            f"{stack.gateways[0]}/api/sessions/{uuid.uuid4()}/messages",
            json={"content": "hi"}, headers={**stack.token("alice"), "Idempotency-Key": "k"},
        )
        nc = await nats.connect(stack.nats_url)
        try:
            keys = await job_keys(nc)
        finally:
            await nc.close()
        # History comes back: the same key now makes the job, once.
        async with create_history(stack.history):
            sid = await session_of(http, stack, "alice")
            url = f"{stack.gateways[1]}/api/sessions/{sid}/messages"
            headers = {**stack.token("alice"), "Idempotency-Key": "k2"}
            first = await http.post(url, json={"content": "hi"}, headers=headers)
            again = await http.post(url, json={"content": "hi"}, headers=headers)
    assert posted.status_code == 503 and posted.headers["retry-after"]
    assert posted.headers["content-type"] == "application/problem+json"
    assert keys == []  # nothing was stored: the record went with the refusal
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]


async def test_cancel_reject_interrupt_and_delete_on_the_real_agent(tmp_path: Path) -> None:
    async with (
        job_stack(tmp_path) as stack,
        httpx.AsyncClient(timeout=WAIT) as http,
    ):
        one, other = stack.gateways
        auth = stack.token("ctl")
        sid = await session_of(http, stack, "ctl")
        url = f"{one}/api/sessions/{sid}/messages"
        slow = await http.post(url, json={"content": "slow [sim:slow=30]"}, headers=auth)
        job = slow.json()["id"]
        for _ in range(100):
            state = (await http.get(f"{one}/api/jobs/{job}", headers=auth)).json()
            if state["status"] == "running":
                break
            await asyncio.sleep(0.05)
        rejected = await http.post(
            url, params={"multitask": "reject"}, json={"content": "no"}, headers=auth
        )
        queued = await http.post(url, json={"content": "behind it"}, headers=auth)
        cancelled_queued = await http.post(
            f"{other}/api/jobs/{queued.json()['id']}/cancel", headers=auth
        )
        for _ in range(100):  # the answer waits CANCEL_WAIT_SECONDS; a loaded agent may be later
            ended = (await http.get(f"{one}/api/jobs/{queued.json()['id']}", headers=auth)).json()
            if ended["status"] != "queued":
                break
            await asyncio.sleep(0.1)
        interrupting = await http.post(
            url, params={"multitask": "interrupt", "wait": 15}, json={"content": "now"},
            headers=auth,
        )
        first = (await http.get(f"{other}/api/jobs/{job}", headers=auth)).json()
        again = await http.post(f"{other}/api/jobs/{job}/cancel", headers=auth)
        # Deleting a session cancels what it still runs.
        doomed = await http.post(url, json={"content": "doomed [sim:slow=30]"}, headers=auth)
        for _ in range(100):
            state = (await http.get(f"{one}/api/jobs/{doomed.json()['id']}", headers=auth)).json()
            if state["status"] == "running":
                break
            await asyncio.sleep(0.05)
        deleted = await http.delete(f"{other}/api/sessions/{sid}", headers=auth)
        for _ in range(100):
            gone = (await http.get(f"{one}/api/jobs/{doomed.json()['id']}", headers=auth)).json()
            if gone["status"] != "running":
                break
            await asyncio.sleep(0.05)
    assert rejected.status_code == 409, rejected.text
    assert cancelled_queued.status_code == 202
    assert ended["status"] == "cancelled"
    assert ended["attempts"] == 0  # it never ran
    assert interrupting.status_code == 200, interrupting.text
    assert interrupting.json()["reply"]["content"].startswith("Echo: now")
    assert first["status"] == "cancelled" and first["reply"] is None
    assert again.status_code == 409
    assert deleted.status_code == 204
    assert gone["status"] == "cancelled"
