"""The admin dashboard in real headless Chromium: per-worker counts for real clients, and a reload as it happens."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable

import pytest

from tests.cdp import CHROMIUM, Browser, Page
from tests.clients import close_all, open_websockets, tally
from tests.wsup_harness import WSUP, Instance, free_port

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
PAGE_COUNTS = "JSON.stringify([...document.querySelectorAll('.slot')].map(e => [+e.dataset.slot, +e.dataset.ws]))"
PAGE_PIDS = "JSON.stringify([...document.querySelectorAll('.slot')].map(e => [+e.dataset.slot, +e.dataset.pid]))"


def test_dashboard_shows_clients_per_worker_and_a_reload(start_wsup: Callable[..., Instance]) -> None:
    admin = free_port()
    wsup = start_wsup("app:asgi", "-i", "4", "--admin", str(admin), "--ws-drain-window", "1")
    wsup.wait_ready(4)
    browser = Browser()
    try:
        asyncio.run(_scenario(wsup, admin, browser))
    finally:
        browser.close()


async def _scenario(wsup: Instance, admin: int, browser: Browser) -> None:
    page = await Page.open(browser)
    await page.goto(f"http://127.0.0.1:{admin}/")
    await page.until("document.querySelectorAll('.slot').length === 4", "four slot rows")
    clients = await open_websockets(f"{wsup.ws_url}/ws", 40)
    try:
        slot_of = {w["pid"]: w["slot"] for w in (await asyncio.to_thread(wsup.status))["workers"]}
        expected = sorted([slot_of[pid], count] for pid, count in tally(clients).items())
        expected += [[slot, 0] for slot in range(4) if slot not in {s for s, _ in expected}]
        # What the clients themselves observed (the pid that greeted each), as the page shows it per slot.
        await page.until(f"{PAGE_COUNTS} === '{_json(sorted(expected))}'", f"per-slot counts {sorted(expected)}")

        reload = subprocess.Popen(
            [*WSUP, "reload", "--name", wsup.name], env=wsup.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            await page.until("document.body.dataset.operation === 'reload'", "the reload on the page")
            seen = await page.until(
                "document.querySelector('.sub.starting, .sub.draining')?.textContent", "a slot being replaced"
            )
            assert "pid" in seen
            out, err = await asyncio.to_thread(reload.communicate, timeout=120)
            assert reload.returncode == 0, err
        finally:
            if reload.poll() is None:
                reload.kill()
        await page.until("document.body.dataset.operation === ''", "the reload to end on the page")
        status = await asyncio.to_thread(wsup.status)
        pids = sorted([w["slot"], w["pid"]] for w in status["workers"])
        assert not set(slot_of) & {pid for _, pid in pids}, "every worker was replaced"
        await page.until(f"{PAGE_PIDS} === '{_json(pids)}'", f"the new pids {pids}")
        log = await page.evaluate("document.getElementById('events').textContent")
        assert "reload started" in log and "→" in log
    finally:
        await close_all(clients)
        await page.close()


def _json(value: object) -> str:
    return str(value).replace(" ", "")
