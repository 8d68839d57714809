"""``chatbus chat`` in a pseudo-terminal (pexpect) against the stack ``chatbus up`` runs."""

import os
import re
import time
from collections.abc import Iterator

import httpx
import pexpect
import pytest

from services.launcher.natsserver import free_port
from tests.e2e.launcher import CHATBUS, RunningStack, chatbus_up

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PROMPT = re.compile(r"\[(\S+) ([0-9a-f]{8})\]> ")
LONG = " ".join(f"word{n}" for n in range(30))  # 30 tokens at 20 a second


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    state = tmp_path_factory.mktemp("chat") / "state"
    with chatbus_up(state, LLM_SIM_TOKENS_PER_SECOND="20") as running:
        yield running


def chat(stack: RunningStack | None, *args: str, url: str | None = None) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if k != "CHATBUS_TOKEN"}
    env["TERM"] = "dumb"
    argv = ["chat", "--url", url or (stack.base_url if stack else ""), *args]
    return pexpect.spawn(CHATBUS, argv, env=env, encoding="utf-8", timeout=20, dimensions=(40, 200))


def test_send_stream_stop_new_and_quit(stack: RunningStack) -> None:
    term = chat(stack, "--token", stack.token("terminal"))
    try:
        term.expect("/help lists the commands")
        term.expect(PROMPT)
        first = term.match.group(2)

        term.sendline(LONG)
        term.expect("Echo: word0")
        assert "(turn 1)" not in term.before + term.after, "the reply came whole, not streamed"
        term.expect(re.escape(f"Echo: {LONG} (turn 1)".split("word0 ", 1)[1]))
        term.expect(PROMPT)

        term.sendline("[sim:slow=30] a slow one")
        time.sleep(1.5)
        term.sendintr()
        term.expect(r"\[stopped\]")
        term.expect(PROMPT)
        with httpx.Client(base_url=stack.base_url, timeout=10) as http:
            headers = {"Authorization": f"Bearer {stack.token('terminal')}"}
            sessions = http.get("/api/sessions", headers=headers).json()["items"]
            messages = http.get(
                f"/api/sessions/{sessions[0]['id']}/messages", headers=headers
            ).json()["items"]
            job = http.get(f"/api/jobs/{messages[0]['job_id']}", headers=headers).json()
        assert messages[0]["content"] == "[sim:slow=30] a slow one"
        assert job["status"] == "cancelled"

        term.sendline("/new friend")
        term.expect("with persona friend")
        term.expect(PROMPT)
        assert term.match.group(1) == "friend" and term.match.group(2) != first

        term.sendline("/sessions")
        term.expect(PROMPT)
        listing = term.before
        assert "friend" in listing and first in listing

        term.sendline("/switch 2")
        term.expect("you: " + re.escape(LONG))
        term.expect(PROMPT)
        assert term.match.group(2) == first

        term.sendline("/memories")
        term.expect("no memories for default yet")
        term.sendline("/nonsense")
        term.expect("unknown command /nonsense")

        term.sendline("/quit")
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert term.exitstatus == 0
    assert "Traceback" not in (term.before or "")


def test_ctrl_c_when_idle_exits(stack: RunningStack) -> None:
    term = chat(stack, "--token", stack.token("idle"))
    try:
        term.expect(PROMPT)
        term.sendintr()
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert term.exitstatus == 0


def test_expected_errors_are_one_line_not_a_traceback(stack: RunningStack) -> None:
    refused = chat(stack, "--token", "not-a-token")
    refused.expect(pexpect.EOF)
    refused.close()
    assert refused.exitstatus == 1
    assert "401" in refused.before and "Traceback" not in refused.before

    away = chat(None, "--token", "t", url=f"http://127.0.0.1:{free_port()}")
    away.expect(pexpect.EOF)
    away.close()
    assert away.exitstatus == 1
    assert "is `chatbus up` running" in away.before and "Traceback" not in away.before

    term = chat(stack, "--token", stack.token("archiver"))
    try:
        term.expect(PROMPT)
        term.sendline("/new")
        term.expect(PROMPT)
        term.sendline("/sessions")
        term.expect(PROMPT)
        term.sendline("/switch 2")  # the session /new archived
        term.expect(PROMPT)
        term.sendline("hello?")
        term.expect(r"error: 409 Conflict: .* \(request id \w+\)")
        term.expect(PROMPT)
        term.sendline("/quit")
        term.expect(pexpect.EOF)
    finally:
        term.close()
    assert "Traceback" not in (term.before or "")
