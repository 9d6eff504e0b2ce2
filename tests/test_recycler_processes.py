"""Recycling with real processes and real clients: by requests, by age and by memory, every worker replaced with
its replacement ready first, so no request fails and each WebSocket client is closed with 1012."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.load import HttpLoad, ReconnectingClient
from tests.wsup_harness import Instance, wait_until

MIB = 1 << 20
_QUICK_DRAIN = ("--ws-drain-window", "0.5")  # the drain is most of a recycle's time: keep the tests short


def _recycled(wsup: Instance, reason: str, slots: int) -> dict[str, Any] | None:
    """The status once every slot has been recycled for ``reason`` at least once, else None."""
    status = wsup.status()
    done = [w for w in status["workers"] if w.get("replacements", {}).get(reason, 0) >= 1]
    return status if len(done) == slots else None


def _under_load(wsup: Instance, until: Callable[[], Any], websockets: int = 40, path: str = "/hello") -> Any:
    """Run keep-alive and new-connection HTTP clients and reconnecting WebSocket clients until ``until()`` holds;
    fail on any failed request, WebSocket close other than 1012, or refused connection."""
    loads = [HttpLoad(wsup.port, 4, True, path).start(), HttpLoad(wsup.port, 2, False, path).start()]

    async def scenario() -> tuple[Any, list[ReconnectingClient]]:
        stop = asyncio.Event()
        clients = [ReconnectingClient(f"{wsup.ws_url}/ws") for _ in range(websockets)]
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]
        try:
            await asyncio.to_thread(wait_until, lambda: all(c.pids for c in clients), 30, 0.05, "all connected")
            result = await asyncio.to_thread(wait_until, until, 90, 0.2, "recycling")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        return result, clients

    try:
        result, clients = asyncio.run(scenario())
    finally:
        for load in loads:
            load.stop()
    for load in loads:
        assert load.ok > 0
        assert load.failures == [], f"{len(load.failures)} failed requests: {load.failures[:5]}"
    closes = [code for client in clients for code in client.close_codes]
    assert closes and set(closes) == {1012}, closes
    assert [e for c in clients for e in c.connect_errors] == []
    return result


def test_every_worker_is_recycled_after_max_requests_and_no_request_fails(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "2", "--max-requests", "100", "--max-requests-jitter", "30", *_QUICK_DRAIN)
    wsup.wait_ready(2)
    status = _under_load(wsup, lambda: _recycled(wsup, "max-requests", 2), websockets=20)
    for worker in status["workers"]:
        assert worker["reason"] == "max-requests" or worker["replacements"].get("max-requests")
    assert status["recycling"]["max_requests"] == 100  # ("recycled" counts a recycle once its drain ends)
    limits = status["recycling"]["workers"].values()
    assert all(100 <= limit["requests"] <= 130 for limit in limits)
    text = wsup.cli("status", "--name", wsup.name).stdout
    assert "by max-requests" in text and "recycling: after 100 requests" in text


def test_workers_are_recycled_at_max_lifetime(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("app:asgi", "-i", "2", "--max-lifetime", "2", "--max-lifetime-jitter", "1", *_QUICK_DRAIN)
    wsup.wait_ready(2)
    status = _under_load(wsup, lambda: _recycled(wsup, "max-lifetime", 2), websockets=10)
    assert status["totals"]["replacements"].get("max-lifetime", 0) >= 2


def test_a_leaking_worker_is_recycled_at_max_memory(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("tests.apps.lifecycle_app:asgi", "-i", "2", "--max-memory", "100M", *_QUICK_DRAIN)
    before = wsup.wait_ready(2)
    assert all(w["rss_bytes"] < 80 * MIB for w in before["workers"]), "the test app is larger than this test assumes"
    # Every request leaks 16 KiB: each worker grows by a few MiB a second until it passes 100 MiB.
    status = _under_load(wsup, lambda: _recycled(wsup, "max-memory", 2), websockets=10, path="/leak?kib=16")
    assert status["recycling"]["held"] == []
    assert status["recycling"]["max_memory_bytes"] == 100 * MIB


def test_a_worker_over_max_memory_from_the_start_is_reported_not_recycled(
    start_wsup: Callable[..., Instance],
) -> None:
    wsup = start_wsup("tests.apps.lifecycle_app:asgi", "-i", "2", "--max-memory", "5M")
    wsup.wait_ready(2)
    status = wait_until(lambda: s if len((s := wsup.status())["recycling"]["held"]) == 2 else None, 30)
    assert status["totals"]["replacements"] == {}
    assert all("right after start" in note and "raise --max-memory" in note for note in status["recycling"]["held"])
    assert "held:" in wsup.cli("status", "--name", wsup.name).stdout
