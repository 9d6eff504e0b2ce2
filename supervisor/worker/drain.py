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
    if websockets:
        # Spread the closes so clients reconnect over the window, not in one stampede.
        step = ws_window_s / len(websockets)
        for index, ws in enumerate(websockets):
            loop.call_later(index * step, ws.close_with, close_code)
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
