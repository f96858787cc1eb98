"""End to end: the dashboard page in Debian's headless Chromium (driven by Playwright).

The page loads, shows a redis queue's depth change after an enqueue, and retries a dead job
through the confirmation dialog; the job is then handed out again. No browser is downloaded:
Playwright launches ``/usr/bin/chromium`` (apt packages ``chromium chromium-driver``, installed
by ``scripts/install.sh``) with a fresh profile of its own.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

import unifiedq
from unifiedq.dashboard import Settings, create_app
from unifiedq.testing.fixtures import require_binary

# The flags this machine needs (docs: no network but loopback, running as root).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A dashboard served by uvicorn in a thread of this process."""

    def __init__(self, urls: list[str], settings: Settings) -> None:
        self.port = _free_port()
        self.dash = create_app(urls, settings)
        config = uvicorn.Config(self.dash.app(), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert self.thread.is_alive(), "uvicorn exited"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_page_shows_depth_change_and_retries_a_dead_job(browser: Any, redis_url: str) -> None:
    from playwright.sync_api import expect

    url = f"{redis_url}?queue=dash-e2e-{uuid.uuid4().hex[:8]}"
    with unifiedq.connect(url) as q, \
            Served([url], Settings(allow_actions=True, interval=0.25)) as served:
        q.enqueue(b"poison")
        dead = q.dequeue(timeout=1)
        assert dead is not None
        q.nack(dead, requeue=False)

        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(served.url)
        card = page.locator('[data-queue="0"]')
        depth = card.locator('[data-field="depth"] .v')
        expect(page.locator("#mode")).to_have_text("actions allowed", timeout=10_000)
        expect(depth).to_have_text("0", timeout=10_000)
        expect(card.locator('[data-field="dead"] .v')).to_have_text("1", timeout=10_000)

        q.enqueue(b"one")
        q.enqueue(b"two")
        expect(depth).to_have_text("2", timeout=10_000)

        row = card.locator(f'tr[data-job="{dead.id}"]')
        expect(row).to_contain_text("poison", timeout=10_000)
        dialogs: list[str] = []

        def accept(dialog: Any) -> None:
            dialogs.append(dialog.message)
            dialog.accept()

        page.on("dialog", accept)
        row.locator('button[data-action="retry"]').click()
        expect(card.locator(f'tr[data-job="{dead.id}"]')).to_have_count(0, timeout=10_000)
        expect(depth).to_have_text("3", timeout=10_000)
        expect(card.locator('[data-field="dead"] .v')).to_have_text("0", timeout=10_000)
        assert dialogs and dead.id in dialogs[0] and "Retry" in dialogs[0]
        assert problems == []

        got = q.dequeue_many(3, timeout=1)
        assert {j.body for j in got} == {b"poison", b"one", b"two"}
        assert dead.id in {j.id for j in got}
        q.ack_many(got)


def test_dismissing_the_confirmation_changes_nothing(browser: Any, redis_url: str) -> None:
    from playwright.sync_api import expect

    url = f"{redis_url}?queue=dash-e2e-{uuid.uuid4().hex[:8]}"
    with unifiedq.connect(url) as q, \
            Served([url], Settings(allow_actions=True, interval=0.25)) as served:
        q.enqueue(b"keep me dead")
        dead = q.dequeue(timeout=1)
        assert dead is not None
        q.nack(dead, requeue=False)
        page = browser.new_page()
        page.on("dialog", lambda d: d.dismiss())
        page.goto(served.url)
        row = page.locator(f'[data-queue="0"] tr[data-job="{dead.id}"]')
        expect(row).to_be_visible(timeout=10_000)
        row.locator('button[data-action="delete"]').click()
        time.sleep(0.6)  # two readings later it is still there
        expect(row).to_be_visible()
        assert q.stats()["dead"] == 1  # type: ignore[attr-defined]
        q.purge()


def test_token_is_asked_for_once_and_then_used(browser: Any) -> None:
    from playwright.sync_api import expect

    token = "browser-token-" + uuid.uuid4().hex
    url = f"memory://dash-e2e-{uuid.uuid4().hex[:8]}"
    with unifiedq.connect(url) as q, \
            Served([url], Settings(token=token, interval=0.25)) as served:
        q.enqueue(b"x")
        page = browser.new_page()
        page.goto(served.url)
        expect(page.locator("#login")).to_be_visible(timeout=10_000)
        expect(page.locator('[data-queue="0"]')).to_have_count(0)
        page.fill("#token", token)
        page.click('#login button[type="submit"]')
        expect(page.locator('[data-queue="0"] [data-field="depth"] .v')).to_have_text(
            "1", timeout=10_000)
        expect(page.locator("#login")).to_be_hidden()
        expect(page.locator("#mode")).to_have_text("read-only")
