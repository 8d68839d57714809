"""Driving the web app in Debian's Chromium with Playwright: the browser, pages, screenshots.

No pytest here beyond the skip/fail decision; ``test_web.py`` holds the scenarios.
"""

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RESULTS = Path(__file__).resolve().parents[2] / "test-results" / "web"


def require_chromium() -> str:
    """Return Chromium's path; skip without it, except in CI, where .ci/run installs it."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run should have installed chromium")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")


class AppPage:
    """One tab of the web app, with the page errors it raised."""

    def __init__(self, browser: Browser, url: str, width: int, height: int, scheme: str) -> None:
        self.context = browser.new_context(
            viewport={"width": width, "height": height}, color_scheme=scheme  # type: ignore[arg-type]
        )
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready]")

    def shot(self, name: str) -> Path:
        """Save a screenshot of the whole window under test-results/web/."""
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def create_session(self, persona: str = "default", title: str | None = None) -> str:
        """Create a session from the form; return its id once it is open."""
        page = self.page
        if page.locator("#new-session").is_hidden():
            page.click(".tabs button[data-view=sessions]")
        page.fill("#new-persona", persona)
        page.fill("#new-title", title or "")
        current = "#session-list li:has(.pick[aria-current=true])"
        before = None
        if page.locator(current).count():
            before = page.get_attribute(current, "data-session")
        page.click("#new-session button[type=submit]")
        page.wait_for_function(
            "(before) => { const li = document.querySelector("
            "'#session-list li:has(.pick[aria-current=true])');"
            " return li && li.dataset.session !== before"
            " && !document.querySelector('#send').disabled; }",
            arg=before,
        )
        return str(page.get_attribute(current, "data-session"))

    def send(self, text: str) -> None:
        """Type a message and press Enter."""
        self.page.fill("#composer-input", text)
        self.page.press("#composer-input", "Enter")

    def reply(self) -> str:
        """Return the text of the last assistant bubble."""
        return self.page.locator(".msg.assistant .text").last.inner_text()

    def reply_state(self) -> str:
        """Return the state line of the last assistant bubble."""
        return self.page.locator(".msg.assistant .state").last.inner_text()

    def wait_reply_done(self, timeout: float = 30) -> None:
        """Wait until the last reply is stored (its bubble stops being live)."""
        self.page.wait_for_selector(
            ".msg.assistant:last-child:not(.live)", timeout=timeout * 1000
        )

    def samples_until(self, done: Callable[[], bool], timeout: float = 30) -> list[str]:
        """Read the last reply's text every 50 ms until ``done``; return the distinct texts."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"not done within {timeout} s; last {seen[-1:]}"
            if self.page.locator(".msg.assistant").count():
                text = self.reply()
                if not seen or seen[-1] != text:
                    seen.append(text)
            time.sleep(0.05)
        return seen

    def close(self) -> None:
        """Close the tab's browser context."""
        self.context.close()
