"""The steering benchmark's clients: WebSockets that record which worker greeted them and how long that took.

Each server's ``/ws`` greets a new WebSocket with its worker's pid (``app:asgi`` and ``tests/apps/stall.py``), so
every client knows where the kernel put it without asking the server.
"""

from __future__ import annotations

import asyncio
import collections
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

OPEN_TIMEOUT_S = 60.0


@dataclass
class Client:
    """One WebSocket client: when it started connecting, how long until the greeting, and which pid greeted it."""

    started: float  # monotonic
    seconds: float
    pid: int
    ws: ClientConnection


@dataclass
class Batch:
    clients: list[Client] = field(default_factory=list)

    def counts(self) -> dict[int, int]:
        return dict(collections.Counter(client.pid for client in self.clients))

    def latencies(self) -> list[float]:
        return [client.seconds for client in self.clients]

    async def close(self) -> None:
        await asyncio.gather(*(client.ws.close() for client in self.clients), return_exceptions=True)


def spread(counts: dict[int, int], workers: int) -> float:
    """max/min connections per worker; a worker that got none makes it infinite."""
    values = list(counts.values()) + [0] * (workers - len(counts))
    return max(values) / min(values) if min(values) else float("inf")


async def open_one(url: str, delay: float = 0.0) -> Client:
    if delay > 0:
        await asyncio.sleep(delay)  # the client's arrival time
    started = time.monotonic()
    ws = await connect(url, open_timeout=OPEN_TIMEOUT_S, ping_interval=None, max_queue=None)
    hello: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_S))
    return Client(started, time.monotonic() - started, int(hello["pid"]), ws)


async def at_once(url: str, count: int) -> Batch:
    """``count`` clients connecting at the same moment (one event-loop pass opens every socket)."""
    return Batch(list(await asyncio.gather(*(open_one(url) for _ in range(count)))))


async def arriving(url: str, count: int, over_s: float, seed: int) -> Batch:
    """``count`` clients arriving at uniformly random instants over ``over_s`` seconds."""
    rng = random.Random(seed)
    return Batch(list(await asyncio.gather(*(open_one(url, rng.uniform(0, over_s)) for _ in range(count)))))


async def reconnecting(url: str, count: int, delay_s: tuple[float, float], seed: int) -> Batch:
    """Clients whose connection was just cut, back after a random delay, retrying as a browser would."""
    rng = random.Random(seed)

    async def one() -> Client:
        await asyncio.sleep(rng.uniform(*delay_s))
        for _ in range(50):
            try:
                return await open_one(url)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.2)
        return await open_one(url)

    return Batch(list(await asyncio.gather(*(one() for _ in range(count)))))


def new_connection_latencies(port: int, count: int) -> list[float]:
    """Seconds for TCP connect + one ``GET /health`` + close, ``count`` times one after the other."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            response = b""
            while chunk := sock.recv(4096):
                response += chunk
        latencies.append(time.perf_counter() - started)
        if b" 200 " not in response[:16]:
            raise RuntimeError(f"GET /health answered {response[:60]!r}")
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]
