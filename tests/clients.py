"""Real WebSocket and HTTP clients for integration tests (the demo app greets each WebSocket with its worker pid)."""

from __future__ import annotations

import asyncio
import collections
import http.client
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect


async def open_websockets(
    url: str, count: int, concurrency: int = 400, local_address: str | None = None
) -> list[tuple[ClientConnection, int]]:
    """Open ``count`` WebSockets (at most ``concurrency`` handshakes at once, from ``local_address`` if given);
    return each with its worker pid."""
    gate = asyncio.Semaphore(concurrency)
    source: dict[str, Any] = {"local_addr": (local_address, 0)} if local_address else {}

    async def one() -> tuple[ClientConnection, int]:
        async with gate:
            ws = await connect(url, open_timeout=30, ping_interval=None, max_queue=None, **source)
            hello: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
            return ws, int(hello["pid"])

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def close_all(connections: list[tuple[ClientConnection, int]]) -> None:
    await asyncio.gather(*(ws.close() for ws, _ in connections), return_exceptions=True)


def tally(connections: list[tuple[ClientConnection, int]]) -> dict[int, int]:
    return dict(collections.Counter(pid for _, pid in connections))


def http_get(port: int, path: str = "/health", timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
