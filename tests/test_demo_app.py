"""The demo chat (``app:asgi``) in real headless Chromium: chat across workers, a plain `wsup publish`, a message
typed while disconnected sent once reconnected, and the new worker named after a reload."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cdp import CHROMIUM, Browser, Page
from tests.wsup_harness import Instance, free_port

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
LOG = "document.getElementById('log').textContent"
STATE = "document.getElementById('state').textContent"
SCREENSHOT = os.environ.get("WSUP_DEMO_SCREENSHOT")  # where to keep a screenshot of the page (docs/demo.png)


def test_demo_chat_in_a_browser(start_wsup: Callable[..., Instance]) -> None:
    admin = free_port()
    wsup = start_wsup("app:asgi", "-i", "2", "--admin", str(admin), "--ws-drain-window", "0.5")
    wsup.wait_ready(2)
    browser = Browser(1000, 760)
    try:
        asyncio.run(_scenario(wsup, admin, browser))
    finally:
        browser.close()


async def _say(page: Page, text: str) -> None:
    form = "document.getElementById('f')"
    await page.evaluate(f"document.getElementById('msg').value = {text!r}; {form}.requestSubmit()")


async def _scenario(wsup: Instance, admin: int, browser: Browser) -> None:
    alice, bob = await Page.open(browser), await Page.open(browser)
    try:
        for page in (alice, bob):
            await page.goto(wsup.url + "/")
            await page.until(f"{STATE}.startsWith('on worker ')", "the WebSocket to open")
        link = await alice.evaluate("document.querySelector('a[href$=\"/\"]')?.href")
        assert link == f"http://127.0.0.1:{admin}/"
        assert await alice.evaluate("document.querySelector('link[rel=icon]').href.endsWith('/favicon.svg')")

        await _say(alice, "hello from alice " + "x" * 300)
        await bob.until(f"{LOG}.includes('hello from alice')", "alice's line at bob's")
        wraps = "document.getElementById('log').scrollWidth <= document.getElementById('log').clientWidth"
        assert await bob.evaluate(wraps), "a long word must wrap, not widen the log"

        result = await asyncio.to_thread(wsup.cli, "publish", "chat", "maintenance at 22:00", "--name", wsup.name)
        assert result.returncode == 0, result.stderr
        for page in (alice, bob):
            await page.until(f"{LOG}.includes('[published] maintenance at 22:00')", "the published plain string")

        # Typed while disconnected: kept, and sent once the page has reconnected.
        # One evaluation, so that the page cannot reconnect between the close and the check (it retries on a timer).
        queued = await alice.evaluate(
            "ws.close(); document.getElementById('msg').value = 'typed while offline';"
            " document.getElementById('f').requestSubmit(); document.getElementById('queued').textContent"
        )
        assert "1 message(s) waiting to be sent" in queued
        await bob.until(f"{LOG}.includes('typed while offline')", "the queued line, once alice reconnected")
        assert "retrying in" in await alice.evaluate(LOG)

        before = await alice.evaluate(STATE)
        result = await asyncio.to_thread(wsup.cli, "reload", "--name", wsup.name)
        assert result.returncode == 0, result.stderr
        pids = {str(w["pid"]) for w in (await asyncio.to_thread(wsup.status))["workers"]}
        now = await alice.until(
            f"{STATE}.startsWith('on worker ') && {STATE} !== {before!r} && {STATE}", "the page to name its new worker"
        )
        assert now.split()[2] in pids, (now, pids)
        log = await alice.evaluate(LOG)
        assert "1012, worker restarting" in log and f"now on worker {now.split()[2]}" in log
        if SCREENSHOT:
            await _say(bob, "back after the reload")
            await alice.until(f"{LOG}.includes('back after the reload')", "bob's line")
            await alice.screenshot(Path(SCREENSHOT))
    finally:
        await alice.close()
        await bob.close()
