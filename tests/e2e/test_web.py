"""The web app in a real browser (Debian's Chromium, driven by Playwright) against the stack
``chatbus up`` runs. Each scenario saves a screenshot under test-results/web/."""

import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Route

from tests.e2e.launcher import RunningStack, chatbus_up
from tests.e2e.tcpcut import CuttableProxy
from tests.e2e.web import ARGS, AppPage, require_chromium

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MAX_ACTIVE_JOBS = 2
RETRY_AFTER = 3
LONG = " ".join(f"word{n}" for n in range(60))  # 60 tokens at 15 a second: 4 s of deltas
Open = Callable[..., AppPage]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    state = tmp_path_factory.mktemp("web") / "state"
    with chatbus_up(
        state,
        LLM_SIM_TOKENS_PER_SECOND="15",
        MAX_ACTIVE_JOBS_PER_USER=str(MAX_ACTIVE_JOBS),
        RETRY_AFTER_SECONDS=str(RETRY_AFTER),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def open_app(
    stack: RunningStack, browser: object, request: pytest.FixtureRequest
) -> Iterator[Open]:
    """Open the app signed in as a user (or through a link); fail on any uncaught page error."""
    pages: list[AppPage] = []

    def open_(
        user: str | None = None, link: str | None = None, width: int = 1400, height: int = 900,
        scheme: str = "light",
    ) -> AppPage:
        url = link or f"{stack.base_url}/#token={stack.token(user or 'web')}"
        page = AppPage(browser, url, width, height, scheme)  # type: ignore[arg-type]
        pages.append(page)
        return page

    yield open_
    for n, page in enumerate(pages):
        page.shot(f"end-{request.node.name}-{n}")  # how each tab looked when the test ended
        errors = page.errors
        page.close()
        assert errors == [], f"uncaught errors in the page: {errors}"


def api(stack: RunningStack, user: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.token(user)}"},
        timeout=30,
    )


def test_the_printed_link_signs_in_and_a_session_is_created(
    stack: RunningStack, open_app: Open
) -> None:
    link = stack.app_link()
    token = link.split("#token=", 1)[1]
    app = open_app(link=link)
    page = app.page
    assert "#" not in page.url, "the token stayed in the address bar"
    assert page.evaluate("sessionStorage.getItem('chatbus.token')") == token
    assert page.inner_text("#whoami") == "signed in as dev"
    app.create_session(persona="friend", title="Tea talk")
    assert page.inner_text("#chat-title") == "Tea talk"
    assert "friend" in page.inner_text("#session-list .pick[aria-current=true]")
    app.shot("01-signed-in-session-created")
    logs = (stack.state_dir / "logs").glob("*.log")
    assert not [p.name for p in logs if token in p.read_text("utf-8", "replace")]


def test_without_a_token_the_app_asks_for_one(stack: RunningStack, browser: object) -> None:
    app = AppPage.__new__(AppPage)
    context = browser.new_context()  # type: ignore[attr-defined]
    try:
        page = context.new_page()
        page.goto(stack.base_url + "/")
        page.wait_for_selector("#signin:not([hidden])")
        page.fill("#signin-token", "not-a-token")
        page.click("#signin-form button[type=submit]")
        alert = page.locator("#errors .error").first
        alert.wait_for()
        assert "401" in alert.inner_text() and "request id:" in alert.inner_text()
        assert page.locator("#signin").is_visible()
        page.fill("#signin-token", stack.token("typed"))
        page.click("#signin-form button[type=submit]")
        page.wait_for_selector("body[data-ready]")
        assert page.inner_text("#whoami") == "signed in as typed"
        page.wait_for_selector("#feed-status[data-polls]")  # the dashboard polls as "typed"
        app.page = page
        app.shot("02-sign-in-form")
    finally:
        context.close()


def test_the_event_parser_survives_any_split_of_the_stream(open_app: Open) -> None:
    app = open_app("parser")
    wire = (
        ': ping\r\n\r\nevent: delta\r\nid: d1.0\r\ndata: {"text":\r\ndata: "a"}\r\n\r\n'
        'event: status\rid: s2\rdata: {}\r\revent: delta\nid: d1.1\ndata: {"text": "é"}\n\n'
    )
    results = app.page.evaluate(
        """async (wire) => {
            const { SseParser } = await import("/web/js/sse.js");
            const out = [];
            for (let size = 1; size <= wire.length; size += 1) {
                const parser = new SseParser();
                const events = [];
                for (let i = 0; i < wire.length; i += size) {
                    events.push(...parser.push(wire.slice(i, i + size)));
                }
                out.push(JSON.stringify(events));
            }
            return [...new Set(out)];
        }""",
        wire,
    )
    assert len(results) == 1, results
    assert json.loads(results[0]) == [
        {"event": "delta", "data": '{"text":\n"a"}', "id": "d1.0"},
        {"event": "status", "data": "{}", "id": "s2"},
        {"event": "delta", "data": '{"text": "é"}', "id": "d1.1"},
    ]


def test_the_reply_streams_then_completes(open_app: Open) -> None:
    app = open_app("streamer")
    app.create_session()
    app.send(LONG)
    page = app.page
    page.wait_for_selector(".msg.user >> text=word59")  # the user's message shows at once
    samples = app.samples_until(lambda: page.locator(".msg.assistant.live").count() == 0 and
                                page.locator(".msg.assistant").count() > 0)
    expected = f"Echo: {LONG} (turn 1)"
    partial = [s for s in samples if s and s != expected]
    assert len(partial) >= 3, f"the reply did not grow token by token: {samples}"
    wrong = [s for s in partial if not expected.startswith(s)]
    assert not wrong, f"the streamed text skipped or repeated pieces: {wrong[0]!r}"
    assert app.reply() == expected
    assert page.get_attribute(".msg.assistant .text", "aria-busy") == "false"
    app.shot("03-reply-completed")


def test_stop_and_escape_stop_a_slow_reply(stack: RunningStack, open_app: Open) -> None:
    app = open_app("stopper")
    app.create_session()
    page = app.page
    app.send("[sim:slow=30] take your time")
    page.wait_for_selector(".msg.assistant.live .state >> text=thinking")
    assert page.locator("#stop").is_visible() and page.locator("#send").is_hidden()
    app.shot("04-slow-reply-thinking")
    page.click("#stop")
    page.wait_for_selector(".msg.assistant.stopped")
    assert "stopped" in app.reply_state()
    app.shot("04-slow-reply-stopped")
    page.wait_for_selector("#send:not([hidden])")

    app.send("[sim:slow=30] and again")
    page.wait_for_selector(".msg.assistant.live .state >> text=thinking")
    page.keyboard.press("Escape")
    page.wait_for_selector(".msg.assistant.stopped >> nth=1")
    with api(stack, "stopper") as client:
        ids = page.eval_on_selector_all(".msg.stopped", "els => els.map(e => e.dataset.job)")
        jobs = [client.get(f"/api/jobs/{job_id}").json() for job_id in ids]
    assert [j["status"] for j in jobs] == ["cancelled", "cancelled"]


def test_a_reload_mid_reply_continues_it(open_app: Open) -> None:
    app = open_app("reloader")
    app.create_session()
    page = app.page
    app.send(LONG)
    page.wait_for_function(
        "() => { const t = document.querySelector('.msg.assistant.live .text');"
        " return t && t.textContent.split(' ').length > 6; }"
    )
    before = app.reply()
    page.reload()
    page.wait_for_selector("body[data-ready]")
    page.wait_for_selector(".msg.assistant")
    restored = app.reply()
    assert restored.startswith(before), (before, restored)
    app.shot("05-reloaded-mid-reply")
    expected = f"Echo: {LONG} (turn 1)"
    samples = app.samples_until(lambda: page.locator(".msg.assistant.live").count() == 0)
    assert app.reply() == expected
    assert any(len(restored) < len(s) < len(expected) for s in samples), (
        f"the reply did not continue streaming after the reload: {len(samples)} samples"
    )
    wrong = [s for s in samples if not expected.startswith(s)]
    assert not wrong, f"after the reload the text skipped or repeated pieces: {wrong[0]!r}"
    assert page.locator(".msg.user").count() == 1
    app.shot("05-reloaded-reply-completed")


def test_a_dropped_connection_mid_reply_reconnects(stack: RunningStack, open_app: Open) -> None:
    port = int(stack.base_url.rsplit(":", 1)[1])
    with CuttableProxy(port) as proxy:
        app = open_app(link=f"http://127.0.0.1:{proxy.port}/#token={stack.token('cut')}")
        app.create_session()
        page = app.page
        app.send(LONG)
        page.wait_for_function(
            "() => { const t = document.querySelector('.msg.assistant.live .text');"
            " return t && t.textContent.split(' ').length > 4; }"
        )
        proxy.cut()
        page.wait_for_selector(".msg.assistant.live .state >> text=reconnecting")
        app.shot("06-connection-lost")
        expected = f"Echo: {LONG} (turn 1)"
        samples = app.samples_until(lambda: page.locator(".msg.assistant.live").count() == 0)
        assert app.reply() == expected
        wrong = [s for s in samples if not expected.startswith(s)]
        assert not wrong, f"after reconnecting the text skipped or repeated pieces: {wrong[0]!r}"


def test_sessions_come_in_pages(stack: RunningStack, open_app: Open) -> None:
    with api(stack, "many") as client:
        for n in range(21):
            assert client.post("/api/sessions", json={"persona": f"p{n}"}).status_code == 201
    app = open_app("many")
    page = app.page
    assert page.locator("#session-list li").count() == 20
    page.click("#sessions-more")
    page.wait_for_function("() => document.querySelectorAll('#session-list li').length === 21")
    assert page.locator("#sessions-more").is_hidden()
    assert page.inner_text("#session-list li:last-child .name") == "p0"


def test_another_tab_follows_a_reply_being_written(open_app: Open) -> None:
    first = open_app("two-tabs")
    session = first.create_session(title="Shared")
    first.send(LONG)
    first.page.wait_for_selector(".msg.assistant.live .text:not(:empty)")
    second = open_app("two-tabs")  # a fresh tab: nothing of the first one's storage
    page = second.page
    assert page.get_attribute("#session-list li:has(.pick[aria-current=true])",
                              "data-session") == session
    page.wait_for_selector(".msg.assistant.live")
    second.wait_reply_done()
    assert second.reply() == f"Echo: {LONG} (turn 1)"
    second.shot("06-second-tab-followed-the-reply")


def test_429_counts_down_and_retries_by_itself(stack: RunningStack, open_app: Open) -> None:
    with api(stack, "crowded") as client:
        blockers = []
        for n in range(MAX_ACTIVE_JOBS):
            session = client.post("/api/sessions", json={"persona": f"blocker{n}"}).json()
            job = client.post(f"/api/sessions/{session['id']}/messages",
                              json={"content": "[sim:slow=60] hold a slot"})
            assert job.status_code == 202, job.text
            blockers.append(job.json()["id"])
        app = open_app("crowded")
        app.create_session(persona="patient")
        page = app.page
        app.send("let me in")
        notice = page.locator("#notice")
        notice.wait_for()
        page.wait_for_selector("#notice-text >> text=Retrying in")
        text = page.inner_text("#notice-text")
        assert "Too many" in text and "request id:" in text, text
        app.shot("07-429-countdown")
        seen = set()
        deadline = time.monotonic() + RETRY_AFTER * 2 + 2
        while time.monotonic() < deadline:
            words = page.inner_text("#notice-text").split("Retrying in ")
            if len(words) == 2:
                seen.add(words[1].split(" ")[0])
            time.sleep(0.2)
        assert {"3", "2", "1"} <= seen, seen
        client.post(f"/api/jobs/{blockers[0]}/cancel")
        app.wait_reply_done(timeout=RETRY_AFTER * 3)
        assert app.reply() == "Echo: let me in (turn 1)"
        assert notice.is_hidden()
        client.post(f"/api/jobs/{blockers[1]}/cancel")


def test_503_says_the_service_is_unavailable_then_retries(open_app: Open) -> None:
    app = open_app("unlucky")
    app.create_session()
    page = app.page
    injected: list[str] = []

    def once_unavailable(route: Route) -> None:
        if route.request.method != "POST" or injected:
            route.continue_()
            return
        injected.append(route.request.url)  # the network fails this one POST; the rest is real
        problem = {"type": "about:blank", "title": "Service Unavailable", "status": 503,
                   "detail": "a needed service is unavailable", "request_id": "injected-503"}
        route.fulfill(status=503, body=json.dumps(problem), headers={
            "Content-Type": "application/problem+json", "Retry-After": "2",
            "X-Request-ID": "injected-503"})

    page.route("**/api/sessions/*/messages*", once_unavailable)
    app.send("are you there")
    page.wait_for_selector("#notice-text >> text=The service is unavailable")
    text = page.inner_text("#notice-text")
    assert "a needed service is unavailable" in text and "injected-503" in text, text
    app.shot("07-503-unavailable")
    app.wait_reply_done()
    assert app.reply() == "Echo: are you there (turn 1)"
    assert len(injected) == 1


def test_delete_a_session_after_confirming(stack: RunningStack, open_app: Open) -> None:
    app = open_app("deleter")
    keep = app.create_session(persona="keeper", title="Keep me")
    doomed = app.create_session(persona="doomed", title="Delete me")
    page = app.page
    app.send("goodbye")
    app.wait_reply_done()
    page.click(f"#session-list li[data-session='{doomed}'] button[aria-label^='Delete session']")
    page.wait_for_selector("#confirm[open]")
    assert "Delete me" in page.inner_text("#confirm-text")
    app.shot("08-delete-confirm")
    page.click("#confirm-cancel")
    assert page.locator(f"#session-list li[data-session='{doomed}']").count() == 1
    page.click(f"#session-list li[data-session='{doomed}'] button[aria-label^='Delete session']")
    page.click("#confirm-ok")
    page.wait_for_selector(f"#session-list li[data-session='{doomed}']", state="detached")
    assert page.locator(f"#session-list li[data-session='{keep}']").count() == 1
    assert page.locator("#messages .msg").count() == 0
    app.shot("08-session-deleted")
    with api(stack, "deleter") as client:
        assert client.get(f"/api/sessions/{doomed}").status_code == 404


def test_the_history_feed_keeps_moving_while_a_slow_reply_runs(open_app: Open) -> None:
    app = open_app("watcher")
    app.create_session()
    page = app.page
    app.send("[sim:slow=15] watch the feed")
    page.wait_for_selector("#feed >> text=watch the feed")  # the message is in the feed at once
    polls = int(page.get_attribute("#feed-status", "data-polls") or 0)
    time.sleep(4.5)
    later = int(page.get_attribute("#feed-status", "data-polls") or 0)
    assert later >= polls + 2, (polls, later)
    assert "thinking" in app.reply_state(), "the slow reply ended before the check"
    assert "bad" not in (page.get_attribute("#feed-status", "class") or "")
    app.shot("09-feed-moving-while-reply-runs")
    page.click("#stop")
    page.wait_for_selector(".msg.assistant.stopped")


def test_memories_are_listed_and_deleted(open_app: Open) -> None:
    app = open_app("memorious")
    session = app.create_session(persona="tea")
    page = app.page
    app.send("I like green tea")
    app.wait_reply_done()
    page.click(f"#session-list li[data-session='{session}'] button[aria-label^='Archive session']")
    page.wait_for_selector("#chat-meta >> text=archived")
    assert page.locator("#composer-input").is_disabled()
    deadline = time.monotonic() + 30
    while page.locator("#memory-list li").count() == 0:
        assert time.monotonic() < deadline, "no memory shown within 30 s of archiving"
        page.fill("#memories-persona", "tea")
        page.click("#memories-form button[type=submit]")
        time.sleep(0.5)
    assert page.inner_text("#memory-list li .content") == "The user said: I like green tea"
    app.shot("10-memories")
    page.click("#memory-list li button:has-text('Delete')")
    page.wait_for_selector("#memory-list li", state="detached")
    assert page.locator("#memories-empty").is_visible()


def test_an_error_shows_its_detail_and_request_id(open_app: Open) -> None:
    app = open_app("oversize")
    app.create_session()
    page = app.page
    app.send("x" * 40_000)
    alert = page.locator("#errors .error").first
    alert.wait_for()
    text = alert.inner_text()
    assert "(413)" in text and "request id:" in text, text
    assert "not sent" in page.inner_text(".msg.user .state")
    assert len(page.input_value("#composer-input")) == 40_000  # given back, to edit
    app.shot("11-error-413")


def test_tool_calls_show_as_they_happen(open_app: Open) -> None:
    app = open_app("tooler")
    app.create_session()
    app.send("I like tea")
    app.wait_reply_done()
    app.send("search history for tea")
    page = app.page
    page.wait_for_selector(".msg.assistant .tools li >> text=search_history", timeout=20_000)
    app.wait_reply_done()
    assert app.reply().startswith("Echo: search history for tea (turn 2) [search_history:")
    app.shot("12-tool-call")


def test_on_a_phone_in_dark_mode(open_app: Open) -> None:
    app = open_app("phone", width=390, height=844, scheme="dark")
    page = app.page
    assert page.locator(".tabs").is_visible()
    app.create_session(title="Pocket chat")
    assert page.locator("#chat-panel").is_visible() and page.locator("#sessions-panel").is_hidden()
    page.fill("#composer-input", "line one")
    page.press("#composer-input", "Shift+Enter")
    page.type("#composer-input", "line two")
    page.press("#composer-input", "Enter")
    app.wait_reply_done()
    assert page.locator(".msg.user .text").last.inner_text() == "line one\nline two"
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(17, 20, 24)", background
    app.shot("13-phone-dark-chat")
    page.click(".tabs button[data-view=dashboard]")
    page.wait_for_selector("#feed >> text=line two")
    app.shot("13-phone-dark-dashboard")
