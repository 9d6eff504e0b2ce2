"""A worker's graceful drain: stop accepting, finish what is in flight, close every connection at a clean point.

uvicorn's own shutdown closes idle keep-alive connections at once (a request already on the wire is then lost) and
closes every WebSocket in the same instant. Here an idle keep-alive connection gets a short grace in which a new
request is still answered, with ``Connection: close``; WebSockets are closed one by one across a window.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import uvicorn

from supervisor.worker.protocols import WorkerConnections, WsupHttpProtocol, WsupWebSocketProtocol

logger = logging.getLogger("wsup.worker")


@dataclass(frozen=True, slots=True)
class DrainResult:
    http_closed: int
    websocket_closed: int
    forced: int  # connections or tasks still open at the deadline, closed or cancelled by force
    seconds: float


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
    websockets = [c for c in connections if isinstance(c, WsupWebSocketProtocol)]
    for conn in http:
        if conn.is_idle():
            conn.close_if_idle_after(idle_grace_s)
        else:
            conn.cycle.keep_alive = False
    spread_closes(websockets, close_code, ws_window_s)
    logger.info(
        "draining: %d HTTP and %d WebSocket connections, %d tasks",
        len(http),
        len(websockets),
        len(server.server_state.tasks),
    )

    changed = asyncio.Event()
    counts.on_lost = changed.set
    deadline = started + deadline_s
    while not _all_done(server) and loop.time() < deadline:
        changed.clear()
        # Woken by every closed connection; the short cap catches tasks that end after their connection.
        try:
            await asyncio.wait_for(changed.wait(), timeout=min(0.1, max(0.0, deadline - loop.time())))
        except TimeoutError:
            pass

    forced = len(server.server_state.connections) + len(server.server_state.tasks)
    if forced:
        logger.warning("drain deadline reached: closing %d connections/tasks by force", forced)
        for protocol in list(server.server_state.connections):
            protocol.shutdown()
        for task in list(server.server_state.tasks):
            task.cancel()
    for asyncio_server in server.servers:
        await asyncio_server.wait_closed()
    return DrainResult(len(http), len(websockets), forced, loop.time() - started)
