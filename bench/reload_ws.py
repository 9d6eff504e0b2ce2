"""WebSockets through one reload: N auto-reconnecting clients, their disconnects, close codes and final spread.

Each client connects to ``/ws``, reads the greeting ``{"type": "hello", "pid": ...}`` (the worker that holds it),
waits until the server closes the connection, records the close code, and reconnects at once (after a connect
failure it backs off 50 ms). The clients run in this process on uvloop.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop
from reload_servers import Reload, Server
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

# A handshake that takes long under a storm is slow, not failed: a short open timeout only makes every slow
# client retry, and thousands of them retrying at once never settle on 2 busy cores.
OPEN_TIMEOUT_S = 60.0
RETRY_S = 0.05
# The clients' first connections arrive at this rate (400: 0.4 s; 5,000: 5 s), so that thousands of them are not
# one burst that times out in the client itself; the reconnections after the reload are not paced by the clients.
FIRST_CONNECT_PER_S = 1000.0
CONNECT_TIMEOUT_S = 60.0  # for all clients to be connected, before and after the reload (+1 s per 100 clients)
QUIET_S = 2.0  # "settled": every client connected and no close or connect error for this long
SETTLE_TIMEOUT_S = 45.0  # (+1 s per 100 clients)


@dataclass
class Client:
    url: str
    first_delay: float = 0.0  # seconds before its first connection
    pid: int | None = None  # the worker holding the live connection; None while disconnected
    pids: list[int] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    last_event: float = 0.0

    def _closed(self, code: int | None) -> None:
        self.closes.append(code)
        self.pid = None
        self.last_event = time.monotonic()

    async def _hold(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        try:
            hello: dict[str, Any] = orjson.loads(await ws.recv())
        except ConnectionClosed as exc:  # closed between the handshake and the greeting
            self._closed(exc.rcvd.code if exc.rcvd else 1006)
            return
        self.pid = int(hello["pid"])
        self.pids.append(self.pid)
        self.last_event = time.monotonic()
        stopped = asyncio.ensure_future(stop.wait())
        closed = asyncio.ensure_future(ws.wait_closed())
        await asyncio.wait([stopped, closed], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if closed.done():
            self._closed(ws.close_code)
        closed.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(self.first_delay)
        while not stop.is_set():
            try:
                async with connect(self.url, open_timeout=OPEN_TIMEOUT_S, ping_interval=None, close_timeout=2) as ws:
                    await self._hold(ws, stop)
            except (OSError, TimeoutError, WebSocketException) as exc:
                if self.pid is not None:  # the connection broke while held (not a clean close)
                    self._closed(1006)
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self.last_event = time.monotonic()
                await asyncio.sleep(RETRY_S)


@dataclass(frozen=True, slots=True)
class WsResult:
    clients: int
    reload: Reload
    disconnects: dict[int, int]  # disconnects per client -> how many clients
    close_codes: dict[str, int]  # close code -> how many closes
    connect_errors: int
    error_samples: tuple[str, ...]
    before_per_worker: dict[int, int]  # worker pid -> clients connected to it before the reload
    per_worker: dict[int, int]  # worker pid -> clients connected to it once everything settled
    status_per_worker: dict[int, int] | None  # wsup only: what `wsup status` reports
    settle_s: float  # from the end of the reload until every client was connected and quiet
    settled: bool

    @property
    def mean_disconnects(self) -> float:
        total = sum(count * clients for count, clients in self.disconnects.items())
        return total / self.clients if self.clients else 0.0

    @property
    def spread(self) -> float:
        """max/min connections per worker after the reload; infinity when a worker holds none."""
        return spread(self.per_worker)

    @property
    def spread_before(self) -> float:
        return spread(self.before_per_worker)

    @property
    def exactly_once_1012(self) -> bool:
        return self.disconnects == {1: self.clients} and set(self.close_codes) == {"1012"}


def spread(per_worker: dict[int, int]) -> float:
    counts = list(per_worker.values())
    if not counts or min(counts) == 0:
        return float("inf")
    return max(counts) / min(counts)


def _per_worker(clients: list[Client], workers: set[int]) -> dict[int, int]:
    counts = {pid: 0 for pid in sorted(workers)}
    for c in clients:
        if c.pid is not None:
            counts[c.pid] = counts.get(c.pid, 0) + 1
    return counts


async def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def _quiet(clients: list[Client]) -> bool:
    now = time.monotonic()
    return all(c.pid is not None for c in clients) and all(now - c.last_event >= QUIET_S for c in clients)


async def _scenario(server: Server, count: int) -> WsResult:
    stop = asyncio.Event()
    clients = [Client(server.url("/ws", "ws"), i / FIRST_CONNECT_PER_S) for i in range(count)]
    tasks = [asyncio.create_task(c.run(stop)) for c in clients]
    extra_s = count / 100
    try:
        if not await _wait_for(lambda: _quiet(clients), CONNECT_TIMEOUT_S + extra_s):
            connected = sum(c.pid is not None for c in clients)
            raise RuntimeError(f"{server.name}: only {connected} of {count} WebSocket clients connected")
        before = _per_worker(clients, await asyncio.to_thread(server.worker_pids))
        for c in clients:  # count only what the reload causes
            c.closes.clear()
            c.errors.clear()
        reload = await asyncio.to_thread(server.reload)
        reloaded_at = time.monotonic()
        settled = await _wait_for(lambda: _quiet(clients), SETTLE_TIMEOUT_S + extra_s)
        settle_s = time.monotonic() - reloaded_at - QUIET_S
        per_worker = _per_worker(clients, await asyncio.to_thread(server.worker_pids))
        status = await asyncio.to_thread(server.websocket_counts)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    codes = collections.Counter(str(code) for c in clients for code in c.closes)
    errors = [e for c in clients for e in c.errors]
    return WsResult(
        clients=count,
        reload=reload,
        disconnects=dict(sorted(collections.Counter(len(c.closes) for c in clients).items())),
        close_codes=dict(codes.most_common()),
        connect_errors=len(errors),
        error_samples=tuple(e for e, _ in collections.Counter(errors).most_common(3)),
        before_per_worker=before,
        per_worker=per_worker,
        status_per_worker=status,
        settle_s=round(max(0.0, settle_s), 2),
        settled=settled,
    )


def run_websocket_reload(server: Server, clients: int) -> WsResult:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_scenario(server, clients))
