"""Client loops that run through a reload and count every failure: keep-alive HTTP, new-connection HTTP, WebSockets."""

from __future__ import annotations

import asyncio
import collections
import http.client
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


@dataclass
class HttpLoad:
    """``clients`` threads sending GET requests in a loop until stopped; ``keep_alive`` reuses connections."""

    port: int
    clients: int = 8
    keep_alive: bool = True
    path: str = "/hello"
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _loop(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None or not self.keep_alive:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200 and bool(body)
                error = "" if ok else f"status {response.status}"
                if response.getheader("connection", "").lower() == "close" or not self.keep_alive:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                if ok:
                    self.ok += 1
                else:
                    self.failures.append(error)
        if conn is not None:
            conn.close()

    def start(self) -> HttpLoad:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@dataclass
class ReconnectingClient:
    """A WebSocket client that reconnects whenever it is closed, recording each close code and worker pid."""

    url: str
    pids: list[int] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    connect_errors: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event, connected: asyncio.Event | None = None) -> None:
        while not stop.is_set():
            try:
                async with connect(self.url, open_timeout=30, ping_interval=None) as ws:
                    hello: dict[str, Any] = orjson.loads(await ws.recv())
                    self.pids.append(int(hello["pid"]))
                    if connected is not None:
                        connected.set()
                    stopped = asyncio.ensure_future(stop.wait())
                    closed = asyncio.ensure_future(ws.wait_closed())
                    await asyncio.wait([stopped, closed], return_when=asyncio.FIRST_COMPLETED)
                    stopped.cancel()
                    if closed.done():
                        self.close_codes.append(ws.close_code)
                    closed.cancel()
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                self.connect_errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)  # back off a little before reconnecting, as real clients do


def disconnects(clients: list[ReconnectingClient]) -> collections.Counter[int]:
    """How many clients were disconnected how many times."""
    return collections.Counter(len(c.close_codes) for c in clients)
