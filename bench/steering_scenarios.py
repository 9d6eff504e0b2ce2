"""The steering benchmark's scenarios, each run against one server and returning plain, JSON-ready results.

Between runs every client is closed and the server allowed to settle (wsup: until ``wsup status`` counts 0
WebSockets; then a pause of ``SETTLE_S`` for every server alike), so each run starts from an idle, balanced server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

from steering_clients import Batch, arriving, at_once, open_one, percentile, reconnecting, spread
from steering_servers import Server, ServerError, health_pid

SETTLE_S = 1.0
STALL_S = 2.0
WAIT_LIMIT_S = 0.25  # the bound: no new connection should wait longer than this for a blocked worker
RECONNECT_DELAY_S = (0.5, 1.5)  # like the demo page's client: 500 ms + up to 1 s of jitter


async def _status_matches(server: Server, counts: dict[int, int], timeout_s: float = 20.0) -> bool | None:
    """wsup: whether ``wsup status`` came to count exactly what the clients saw (None for uvicorn)."""
    if server.status() is None:
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reported = await asyncio.to_thread(server.websocket_counts) or {}
        if {pid: n for pid, n in reported.items() if n} == {pid: n for pid, n in counts.items() if n}:
            return True
        await asyncio.sleep(0.1)
    return False


async def _settle(server: Server, batches: list[Batch]) -> None:
    for batch in batches:
        await batch.close()
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        counts = await asyncio.to_thread(server.websocket_counts)
        if not counts or not any(counts.values()):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(SETTLE_S)
    server.check_alive()


def _summary(batch: Batch, workers: int) -> dict[str, Any]:
    counts = batch.counts()
    latencies = batch.latencies()
    return {
        "counts": sorted(counts.values()),
        "spread": spread(counts, workers),
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "span_ms": (max(c.started for c in batch.clients) - min(c.started for c in batch.clients)) * 1000,
    }


async def burst(server: Server, clients: int) -> dict[str, Any]:
    """``clients`` WebSockets opened at once."""
    before = await asyncio.to_thread(server.status)
    batch = await at_once(server.ws_url, clients)
    after = await asyncio.to_thread(server.status)
    result = _summary(batch, server.workers)
    if before is not None and after is not None:  # wsup: programs attached while the burst was placed
        result["updates"] = after["balance"]["updates"] - before["balance"]["updates"]
    result["status_matches"] = await _status_matches(server, batch.counts())
    await _settle(server, [batch])
    return result


async def sparse(server: Server, clients: int, gap_s: float, idle_s: float = 0.0) -> dict[str, Any]:
    """``clients`` WebSockets opened one after the other, ``gap_s`` apart: whether each worker got its exact share.

    ``idle_s``: a quiet spell first, with no client at all, on top of the settle pause every run starts from (a
    service whose last user left a few seconds ago: the supervisor then plans from its once-a-second reports only).
    """
    await asyncio.sleep(idle_s)  # the quiet spell under test, not a wait for the server
    batch = Batch()
    for _ in range(clients):
        batch.clients.append(await open_one(server.ws_url))
        await asyncio.sleep(gap_s)  # the next user's arrival, not a wait for the server
    counts = batch.counts()
    values = sorted(list(counts.values()) + [0] * (server.workers - len(counts)))
    result = {"counts": values, "even": values[0] == values[-1]}
    await _settle(server, [batch])
    return result


async def spread_out(server: Server, clients: int, over_s: float, seed: int) -> dict[str, Any]:
    """``clients`` WebSockets arriving at random instants over ``over_s`` seconds."""
    batch = await arriving(server.ws_url, clients, over_s, seed)
    result = _summary(batch, server.workers)
    result["status_matches"] = await _status_matches(server, batch.counts())
    await _settle(server, [batch])
    return result


async def _replacement(server: Server, old: set[int], since: float) -> tuple[int, float]:
    """The replacement worker's pid, and seconds from ``since`` until it serves.

    wsup: its status shows it ready. uvicorn has no such signal: until a ``GET /health`` on a new connection is
    answered by it (its idle loop competes for the shared socket's accepts, so this takes a few probes).
    """
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        fresh = server.worker_pids() - old
        if fresh:
            pid = next(iter(fresh))
            status = await asyncio.to_thread(server.status)
            if status is None:
                if await asyncio.to_thread(health_pid, server.port) == pid:
                    return pid, time.monotonic() - since
                continue
            if any(w["pid"] == pid and w["state"] == "ready" for w in status["workers"]):
                return pid, time.monotonic() - since
        await asyncio.sleep(0.02)
    raise ServerError(f"{server.name}: no replacement worker 60 s after the kill")


async def crash_refill(server: Server, clients: int, seed: int, *, when_served: bool) -> dict[str, Any]:
    """Kill -9 the busiest worker; where do its clients land when they come back?

    ``when_served``: they come back over one second once the replacement serves (what steering can fix);
    otherwise each comes back 0.5-1.5 s after its connection was cut, ready or not, as browsers do.
    """
    batch = await at_once(server.ws_url, clients)
    await _status_matches(server, batch.counts())
    old = server.worker_pids()
    victim = max(batch.counts().items(), key=lambda item: item[1])[0]
    lost = [client for client in batch.clients if client.pid == victim]
    kept = Batch([client for client in batch.clients if client.pid != victim])
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    await asyncio.gather(*(client.ws.wait_closed() for client in lost))
    watcher = asyncio.ensure_future(_replacement(server, old - {victim}, killed_at))
    if when_served:
        await watcher
        back = await reconnecting(server.ws_url, len(lost), (0.0, 1.0), seed)
    else:
        back = await reconnecting(server.ws_url, len(lost), RECONNECT_DELAY_S, seed)
    new_pid, ready_s = await watcher
    after_ready = [c for c in back.clients if c.started - killed_at >= ready_s]
    final = Batch(kept.clients + back.clients).counts()
    result = {
        "lost": len(lost),
        "ready_s": ready_s,
        "to_replacement": sum(1 for c in back.clients if c.pid == new_pid),
        "after_ready": len(after_ready),
        "after_ready_to_replacement": sum(1 for c in after_ready if c.pid == new_pid),
        "final_counts": sorted(final.values()),
        "final_spread": spread(final, server.workers),
    }
    await _settle(server, [kept, back])
    return result


async def _weight_zero_after(server: Server, victim: int, since: float, until: float) -> float | None:
    """wsup least-conn: seconds from ``since`` until ``wsup status`` shows weight 0 for ``victim``."""
    while time.monotonic() < until:
        status = await asyncio.to_thread(server.status)
        if status is None or status["balance"]["mode"] != "least-conn":
            return None
        row = next((w for w in status["workers"] if w["pid"] == victim), None)
        if row is not None and row.get("weight") == 0:
            return time.monotonic() - since
        await asyncio.sleep(0.01)
    return None


async def loop_stall(server: Server, clients: int, seed: int) -> dict[str, Any]:
    """Block one worker's event loop for STALL_S while new clients keep arriving (every 50 ms on average)."""
    base = await at_once(server.ws_url, 40)
    await _status_matches(server, base.counts())
    stalled = base.clients[0]
    started = time.monotonic()
    await stalled.ws.send(f"stall {STALL_S}")
    reply = asyncio.ensure_future(stalled.ws.recv())
    detection = asyncio.ensure_future(_weight_zero_after(server, stalled.pid, started, started + STALL_S))
    newcomers = await arriving(server.ws_url, clients, STALL_S + 0.5, seed)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reply, 30)
    weight_zero_s = await detection
    during = [c for c in newcomers.clients if c.started - started < STALL_S]
    waited = [c for c in during if c.seconds > WAIT_LIMIT_S]
    result = {
        "during": len(during),
        "waited": len(waited),
        "waited_after_limit": sum(1 for c in waited if c.started - started >= WAIT_LIMIT_S),
        "max_wait_s": max((c.seconds for c in during), default=0.0),
        "to_stalled": sum(1 for c in during if c.pid == stalled.pid),
        "weight_zero_s": weight_zero_s,
    }
    await _settle(server, [base, newcomers])
    return result


async def greeting(server: Server) -> int:
    """One WebSocket's greeting pid (a liveness probe between scenarios)."""
    client = await open_one(server.ws_url)
    await client.ws.close()
    return client.pid
