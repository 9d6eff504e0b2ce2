"""uvicorn protocol subclasses that keep wsup's connection counts in O(1) and support a clean drain.

uvicorn keeps every live protocol object in ``server_state.connections``; an upgrade swaps the HTTP protocol for a
WebSocket one. Counting WebSockets in their own ``connection_made``/``connection_lost`` gives exact counts without
walking the set, so the request path pays one integer increment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ipc.counters import ACCEPTED, CLOSED, local_cells
from ipc.websocket_close import close_websocket

if AutoWebSocketsProtocol is None:  # pragma: no cover - uvicorn[standard] always brings websockets
    raise ImportError("wsup needs a WebSocket implementation: install uvicorn[standard]")

_WebSocketBase: Any = AutoWebSocketsProtocol


class WsupHttpProtocol(HttpToolsProtocol):
    """httptools HTTP/1.1 that answers with ``Connection: close`` once its worker drains."""

    draining: ClassVar[bool] = False
    on_lost: ClassVar[Callable[[], None] | None] = None  # set by the drain, to wake it when a connection ends
    # Every TCP connection accepted and ended (a WebSocket starts as an HTTP connection and ends as a WebSocket),
    # in the page shared with the supervisor (ipc.counters) once the worker attaches it: steering reads them live.
    cells: ClassVar[memoryview] = local_cells()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        WsupHttpProtocol.cells[ACCEPTED] += 1
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        # Not called for a connection upgraded to a WebSocket: the transport then belongs to the WebSocket protocol.
        WsupHttpProtocol.cells[CLOSED] += 1
        super().connection_lost(exc)
        if WsupHttpProtocol.on_lost is not None:
            WsupHttpProtocol.on_lost()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # A keep-alive connection is closed at a clean point: right after the response to its next request.
        if WsupHttpProtocol.draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def is_idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def close_if_idle_after(self, grace_s: float) -> None:
        """Replace the keep-alive timer with a short one: an idle connection closes after ``grace_s``.

        Any byte received cancels the timer (uvicorn does that in ``data_received``), so a request that arrives
        in the grace period is answered, with ``Connection: close``, instead of being cut.
        """
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(grace_s, self.timeout_keep_alive_handler)


class WsupWebSocketProtocol(_WebSocketBase):  # type: ignore[misc]
    """The WebSocket protocol uvicorn would pick, counting live and total sessions."""

    live: ClassVar[int] = 0
    opened: ClassVar[int] = 0
    on_lost: ClassVar[Callable[[], None] | None] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        WsupWebSocketProtocol.live += 1
        WsupWebSocketProtocol.opened += 1
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        WsupWebSocketProtocol.live -= 1
        WsupHttpProtocol.cells[CLOSED] += 1
        super().connection_lost(exc)
        if WsupWebSocketProtocol.on_lost is not None:
            WsupWebSocketProtocol.on_lost()

    def close_with(self, code: int) -> None:
        """Close from the server side with ``code`` (1012 on reload, 1001 on stop), telling the app too."""
        if not (isinstance(self, WebSocketsSansIOProtocol) and close_websocket(self, code)):
            # Other implementations (or a handshake still in progress) close the way uvicorn does: code 1012.
            self.shutdown()
