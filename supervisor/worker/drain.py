"""A worker's graceful drain: stop accepting, finish what is in flight, close every connection at a clean point.

uvicorn's own shutdown closes idle keep-alive connections at once (a request already on the wire is then lost) and
closes every WebSocket in the same instant. Here an idle keep-alive connection gets a short grace in which a new
request is still answered, with ``Connection: close``; WebSockets are closed one by one across a window.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass

import uvicorn

from ipc.settings import WorkerSettings
from supervisor.worker.http_protocol import WsupHttpProtocol
from supervisor.worker.websocket_protocol import WsupWebSocketProtocol
from supervisor.worker.worker_connections import WorkerConnections

logger = logging.getLogger("wsup.worker")


@dataclass(frozen=True, slots=True)
class DrainResult:
    http_closed: int
    websocket_closed: int
    forced: int  # connections or tasks still open at the deadline, closed or cancelled by force
    seconds: float


def drain_window(settings: WorkerSettings, websockets: int) -> float:
    """Seconds over which a draining worker closes its ``websockets``: ``--ws-drain-window``, widened so that no more
    than ``--ws-drain-rate`` clients a second reconnect (a replacement that takes 11,000 reconnects in 2 s cannot
    answer them all; its accept queue overflows), and at most half the graceful timeout."""
    paced = websockets / settings.ws_drain_rate if settings.ws_drain_rate > 0 else 0.0
    return min(max(settings.ws_drain_window, paced), settings.graceful_timeout / 2)


def spread_closes(
    websockets: list[WsupWebSocketProtocol], close_code: int, window_s: float
) -> list[asyncio.TimerHandle]:
    """Close ``websockets`` one by one across ``window_s``, so clients reconnect over the window, not in one
    stampede. Returns the scheduled closes (a cancelled move cancels the ones not done yet)."""
    if not websockets:
        return []
    loop = asyncio.get_running_loop()
    step = window_s / len(websockets)
    return [loop.call_later(index * step, ws.close_with, close_code) for index, ws in enumerate(websockets)]


class WebSocketMover:
    """``wsup drain --move-websockets`` inside a worker: close the WebSockets open now with 1012 across a window,
    and go on serving (new connections, HTTP, WebSockets opened afterwards)."""

    def __init__(self) -> None:
        self._pending: list[asyncio.TimerHandle] = []
        self.moves = 0

    def move(self, server: uvicorn.Server, close_code: int, window_s: float) -> int:
        self.cancel()
        websockets = [c for c in server.server_state.connections if isinstance(c, WsupWebSocketProtocol)]
        self._pending = spread_closes(websockets, close_code, window_s)
        self.moves += 1
        logger.info("moving %d WebSockets to other hosts over %.1fs", len(websockets), window_s)
        return len(websockets)

    def cancel(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending = []


def _all_done(server: uvicorn.Server) -> bool:
    return not server.server_state.connections and not server.server_state.tasks


async def drain(
    server: uvicorn.Server,
    counts: WorkerConnections,
    *,
    close_code: int,
    ws_window_s: float,
    idle_grace_s: float,
    deadline_s: float,
) -> DrainResult:
    loop = asyncio.get_running_loop()
    started = loop.time()
    # Only this process's copy of the listening socket closes: the supervisor and the replacement keep theirs, so
    # connections waiting in the slot's accept queue are served by the replacement, not reset.
    for asyncio_server in server.servers:
        asyncio_server.close()
    counts.draining = True

    connections = list(server.server_state.connections)
    http = [c for c in connections if isinstance(c, WsupHttpProtocol)]
    for conn in http:
        if conn.is_idle():
            conn.close_if_idle_after(idle_grace_s)  # also a connection that never sent a byte (half-open)
        else:
            conn.cycle.keep_alive = False
    closer = _WebSocketCloser(loop, close_code, started + ws_window_s)
    websockets = closer.schedule(server)
    logger.info(
        "draining: %d HTTP and %d WebSocket connections, %d tasks",
        len(http),
        websockets,
        len(server.server_state.tasks),
    )

    changed = asyncio.Event()
    counts.on_lost = changed.set
    deadline = started + deadline_s
    while not _all_done(server) and loop.time() < deadline:
        changed.clear()
        # Woken by every closed connection; the short cap catches tasks that end after their connection, and
        # WebSockets whose handshake completes during the drain (an upgrade that was in flight when it began).
        try:
            await asyncio.wait_for(changed.wait(), timeout=min(0.1, max(0.0, deadline - loop.time())))
        except TimeoutError:
            pass
        websockets += closer.schedule(server)

    forced = len(server.server_state.connections) + len(server.server_state.tasks)
    if forced:
        logger.warning("drain deadline reached: closing %d connections/tasks by force", forced)
        for protocol in list(server.server_state.connections):
            protocol.shutdown()
        for task in list(server.server_state.tasks):
            task.cancel()
    for asyncio_server in server.servers:
        await asyncio_server.wait_closed()
    return DrainResult(len(http), websockets, forced, loop.time() - started)


class _WebSocketCloser:
    """Closes each WebSocket once, spread over the drain window so clients do not reconnect in one stampede.

    Called again while the drain waits: a WebSocket whose handshake was still in flight when the drain began (its
    client connected just before) is closed as soon as the handshake completes, instead of holding the drain
    until its deadline. One mid-handshake is left alone until then: closing it would refuse the client (HTTP 500).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, close_code: int, window_ends: float) -> None:
        self.loop, self.close_code, self.window_ends = loop, close_code, window_ends
        self.scheduled: weakref.WeakSet[WsupWebSocketProtocol] = weakref.WeakSet()  # ids could be reused

    def schedule(self, server: uvicorn.Server) -> int:
        ready = [
            c
            for c in server.server_state.connections
            if isinstance(c, WsupWebSocketProtocol)
            and c not in self.scheduled
            and getattr(c, "handshake_complete", True)
        ]
        if ready:
            step = max(0.0, self.window_ends - self.loop.time()) / len(ready)
            for index, ws in enumerate(ready):
                self.scheduled.add(ws)
                self.loop.call_later(index * step, ws.close_with, self.close_code)
        return len(ready)
