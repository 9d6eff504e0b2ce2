"""The worker's WebSocket protocol: the one uvicorn would pick, counting live and total sessions and their close
codes, with less memory per idle connection (supervisor.worker.idle_memory) and one keepalive wheel per worker
(runs in each worker)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.http11 import Request

from ipc.counters import CLOSED
from ipc.websocket_close import close_websocket
from supervisor.worker.idle_memory import ReceiveQueue, WritableFlag
from supervisor.worker.keepalive import PingWheel, tick_for
from supervisor.worker.worker_connections import WorkerConnections

if AutoWebSocketsProtocol is None:  # pragma: no cover - uvicorn[standard] always brings websockets
    raise ImportError("wsup needs a WebSocket implementation: install uvicorn[standard]")

_WebSocketBase: Any = AutoWebSocketsProtocol
_NO_HEADERS = Headers()  # what a handshake request holds once its headers are in the ASGI scope
# Header names (lowercased by the HTTP protocol the upgrade comes through) and values that every browser's WebSocket
# handshake repeats: the scope of each connection, which the app holds for the connection's life, points to one copy
# per worker instead of its own (~35 bytes each, ~300 bytes per connection with 5 headers, more from a browser).
# Bytes are immutable, so nobody can tell the difference.
_SHARED_HEADER_BYTES = {
    value: value
    for value in (
        b"host", b"connection", b"upgrade", b"origin", b"user-agent", b"pragma", b"cache-control", b"cookie",
        b"accept-encoding", b"accept-language", b"sec-websocket-key", b"sec-websocket-version",
        b"sec-websocket-extensions", b"sec-websocket-protocol", b"x-forwarded-for", b"x-forwarded-proto",
        b"x-real-ip", b"Upgrade", b"websocket", b"13", b"keep-alive, Upgrade", b"no-cache",
        b"gzip, deflate, br", b"gzip, deflate, br, zstd", b"permessage-deflate; client_max_window_bits", b"http",
        b"https",
    )
}  # fmt: skip
# The attributes uvicorn's websockets-sansio protocol (the one it picks with websockets installed) sets on each
# instance. They are 37, past the 30 keys CPython 3.11 shares among a class's instances, so each connection had a
# private __dict__ of 1,584 bytes. Declared as slots of the subclass, uvicorn's own assignments land in the object
# itself (8 bytes each): ~1.3 KiB less per WebSocket. A name uvicorn adds later still works, in a __dict__ again
# (tests/test_protocols.py notices).
_SANSIO_SLOTS = (
    "app", "app_state", "asgi_version", "client", "close_sent", "close_timeout", "close_timer", "config", "conn",
    "connections", "curr_msg_data_type", "default_headers", "disconnected", "frames", "handshake_complete",
    "handshake_initiated", "initial_response", "last_ping_rtt", "logger", "loop", "pending_ping_payload",
    "ping_interval", "ping_sent_at", "ping_timeout", "ping_timer", "pong_timer", "queue", "read_paused", "request",
    "response", "root_path", "scheme", "scope", "server", "tasks", "transport", "writable",
)  # fmt: skip


class WsupWebSocketProtocol(_WebSocketBase):  # type: ignore[misc]
    """The WebSocket protocol uvicorn would pick, counting live and total sessions."""

    __slots__ = ("wsup", "ping_due", *(_SANSIO_SLOTS if _WebSocketBase is WebSocketsSansIOProtocol else ()))
    server_connections: ClassVar[WorkerConnections]  # the server's, set on the class by protocol_classes

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # In a slot, as in WsupHttpProtocol: a class attribute read through an instance is a slow lookup on 3.11.
        self.wsup = self.server_connections
        self.ping_due = -1  # the tick of its next keepalive ping in the worker's PingWheel, -1: none
        if isinstance(self, WebSocketsSansIOProtocol):
            # The same API with ~4 KiB less per connection (supervisor/worker/idle_memory.py says where it goes).
            self.queue: Any = ReceiveQueue()
            self.writable: Any = WritableFlag(True)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # websockets' parser generator keeps the parsed handshake request as a local variable for the life of the
        # connection. Its headers were copied into the ASGI scope just now and are not read again, so the parsed
        # copy (~1.6 KiB of strings) is let go.
        event.headers = _NO_HEADERS
        scope = getattr(self, "scope", None)  # not set when the handshake was refused
        if scope is not None:
            shared = _SHARED_HEADER_BYTES
            scope["headers"] = [(shared.get(name, name), shared.get(value, value)) for name, value in scope["headers"]]

    def start_keepalive(self) -> None:
        """Called once, when the app's accept has been sent: the handshake's request and response (~2 KiB of
        header objects) are not read again, so an idle connection stops holding them."""
        self.request = self.response = None
        super().start_keepalive()

    def schedule_ping(self) -> None:
        """uvicorn's, with the worker's one wheel instead of a timer per connection (supervisor/worker/keepalive)."""
        wsup = self.wsup
        wheel = wsup.pings
        if wheel is None:
            wheel = wsup.pings = PingWheel(self.loop, tick_for(self.ping_interval))
        wheel.add(self, max(0.0, self.ping_interval - self.last_ping_rtt))

    def stop_keepalive(self) -> None:
        if self.wsup.pings is not None:
            self.wsup.pings.discard(self)
        super().stop_keepalive()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.wsup.websocket_live += 1
        self.wsup.websocket_opened += 1
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.wsup.websocket_live -= 1
        self.wsup.cells[CLOSED] += 1
        if getattr(self, "handshake_complete", False):
            # The code of the closing handshake: the peer's if it sent one, else ours, else 1006 (no close frame).
            conn = self.conn
            frame = conn.close_rcvd or conn.close_sent
            self.wsup.closed_with(frame.code if frame is not None else 1006)
        super().connection_lost(exc)
        if self.wsup.on_lost is not None:
            self.wsup.on_lost()

    def send(self, message: Any) -> Coroutine[Any, Any, None]:
        # Not a coroutine function of its own: every app-level send passes here, and returning uvicorn's coroutine
        # costs ~0.15 µs less per message than awaiting it in a second one.
        if not self.handshake_complete and message["type"] == "websocket.accept" and self.transport.is_closing():
            # uvicorn drops an accept on a closing transport silently, and the app's next send then fails with a
            # RuntimeError and a traceback (4,289 of them in one 50,000-client reload, clients that gave up
            # mid-handshake). A client gone before the accept is a disconnected client: uvicorn's own signal for
            # it, which it swallows quietly at the end of the app.
            raise ClientDisconnected()
        return super().send(message)  # type: ignore[no-any-return]

    def close_with(self, code: int) -> None:
        """Close from the server side with ``code`` (1012 on reload, 1001 on stop), telling the app too."""
        if not (isinstance(self, WebSocketsSansIOProtocol) and close_websocket(self, code)):
            # Other implementations (or a handshake still in progress) close the way uvicorn does: code 1012.
            self.shutdown()
