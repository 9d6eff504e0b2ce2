"""uvicorn protocol subclasses that keep wsup's connection counts in O(1) and support a clean drain.

uvicorn keeps every live protocol object in ``server_state.connections``; an upgrade swaps the HTTP protocol for a
WebSocket one. Counting in their own ``connection_made``/``connection_lost`` gives exact counts without walking the
set, so the request path pays one integer increment. The counts live in one ``WorkerConnections`` per server, which
reaches every protocol instance through uvicorn's ``ServerState`` (the object uvicorn hands each of them), so no
class attribute is written from several places.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.http11 import Request

from ipc.counters import ACCEPTED, CLOSED, local_cells
from ipc.websocket_close import close_websocket
from supervisor.worker.http_limits import ConnectionGuard, HttpLimits
from supervisor.worker.idle_memory import ReceiveQueue, WritableFlag
from supervisor.worker.keepalive import PingWheel, tick_for

if AutoWebSocketsProtocol is None:  # pragma: no cover - uvicorn[standard] always brings websockets
    raise ImportError("wsup needs a WebSocket implementation: install uvicorn[standard]")

_WebSocketBase: Any = AutoWebSocketsProtocol
MIN_CLOSE_CODE, MAX_CLOSE_CODE = 1000, 4999
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
MAX_CLOSE_CODES = 32  # distinct codes counted per worker; more (a peer inventing them) are counted as 1006


class WorkerConnections:
    """One server's connection counts, drain state and HTTP limits, shared by all of its protocol instances."""

    __slots__ = (
        "cells", "websocket_live", "websocket_opened", "close_codes", "draining", "on_lost", "limits", "guard", "pings",
    )  # fmt: skip

    def __init__(self, cells: memoryview | None = None, limits: HttpLimits | None = None) -> None:
        # Every TCP connection accepted and ended (a WebSocket starts as an HTTP connection and ends as a WebSocket),
        # in the page shared with the supervisor (ipc.counters): steering reads them live. Private memory otherwise.
        self.cells = cells if cells is not None else local_cells()
        self.websocket_live = 0
        self.websocket_opened = 0
        self.close_codes: dict[int, int] = {}  # WebSocket sessions ended, by close code (see WsupWebSocketProtocol)
        self.draining = False
        self.on_lost: Callable[[], None] | None = None  # set by the drain, to wake it when a connection ends
        self.limits = limits or HttpLimits()
        self.guard = ConnectionGuard(self.limits)
        self.pings: PingWheel | None = None  # every WebSocket's next keepalive ping, made at the first one

    def closed_with(self, code: int) -> None:
        if not MIN_CLOSE_CODE <= code <= MAX_CLOSE_CODE:
            code = 1006  # not a code a peer may send: counted as an abnormal close, never as a new label
        if code not in self.close_codes and len(self.close_codes) >= MAX_CLOSE_CODES:
            code = 1006  # a peer inventing codes cannot grow the report (or the metrics) without bound
        self.close_codes[code] = self.close_codes.get(code, 0) + 1

    def describe_closes(self) -> dict[str, int]:
        return {str(code): count for code, count in self.close_codes.items()}

    def lost(self) -> None:
        if self.on_lost is not None:
            self.on_lost()


class WsupServerState(ServerState):
    """uvicorn's per-server state, carrying wsup's counts to every protocol instance."""

    def __init__(self, connections: WorkerConnections) -> None:
        super().__init__()
        self.wsup = connections


def _connections_of(server_state: ServerState) -> WorkerConnections:
    # A plain ServerState (a protocol built outside a wsup worker, as in tests) counts into private memory.
    found = getattr(server_state, "wsup", None)
    return found if isinstance(found, WorkerConnections) else WorkerConnections()


_http_connection_made = HttpToolsProtocol.connection_made
_http_connection_lost = HttpToolsProtocol.connection_lost
_http_data_received = HttpToolsProtocol.data_received
_http_on_headers_complete = HttpToolsProtocol.on_headers_complete
_http_init = HttpToolsProtocol.__init__


class WsupHttpProtocol(HttpToolsProtocol):
    """httptools HTTP/1.1 that counts connections and answers with ``Connection: close`` once its worker drains."""

    # Slots, not instance attributes: uvicorn's protocol already keeps 28 attributes in its __dict__, and CPython
    # 3.11 shares a class's dict keys among its instances only up to 30. Two more turned every connection's dict
    # into a private one: 1.3 KiB more per connection, and every attribute access in uvicorn's request path off
    # its fast path (+27,000 instructions per `Connection: close` request, +11,500 per keep-alive one, measured
    # with callgrind; bench/protocol_cost.py).
    __slots__ = ("wsup", "header_bytes")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        _http_init(self, config, server_state, app_state, _loop)
        self.wsup = _connections_of(server_state)
        self.header_bytes = 0

    # Every override below runs for every request, most of them as a callback from httptools' C parser, so there are
    # as few as the limits need, and each calls uvicorn's method directly (no super() object): 9,000 instructions
    # less per `Connection: close` request than with super() and the two overrides that are gone
    # (on_message_begin, on_response_complete; bench/protocol_cost.py --instructions).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wsup = self.wsup
        cells = wsup.cells
        cells[ACCEPTED] += 1
        _http_connection_made(self, transport)
        # Bytes of the current request's line and headers, -1 between requests (httptools has no limit).
        self.header_bytes = 0
        if cells[ACCEPTED] - cells[CLOSED] > wsup.limits.max_connections:
            wsup.guard.refuse(self, 503)
        else:
            wsup.guard.wait_idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # Not called for a connection upgraded to a WebSocket: the transport then belongs to the WebSocket protocol.
        wsup = self.wsup
        wsup.cells[CLOSED] += 1
        wsup.guard.done(self)
        _http_connection_lost(self, exc)
        wsup.lost()

    def data_received(self, data: bytes) -> None:
        counted = self.header_bytes
        if counted < 0:
            cycle = self.cycle
            if cycle is not None and cycle.more_body:  # the current request's body: not headers
                if cycle.response_complete:
                    # Answered before its body arrived, and nobody will read the rest: keeping the connection
                    # alive would mean receiving all of it (100 MiB to a GET) only to throw it away.
                    self.transport.close()
                    self.wsup.guard.closed_unread_body()
                    return
                _http_data_received(self, data)
                return
            counted = 0  # the next request on a keep-alive connection (or pipelined behind the current one)
        wsup = self.wsup
        if counted == 0:
            wsup.guard.wait_headers(self)  # the request's first bytes: from now on it has --header-timeout
        # Inside a request line and headers: count them before httptools buffers them.
        total = counted + len(data)
        limit = wsup.limits.max_header_bytes
        if total > limit:
            end = data.find(b"\r\n\r\n")  # the headers may end in this chunk, followed by the body
            if end < 0 or counted + end + 4 > limit:
                wsup.guard.refuse(self, 431)
                return
        self.header_bytes = total
        _http_data_received(self, data)

    def on_headers_complete(self) -> None:
        self.header_bytes = -1
        wsup = self.wsup
        wsup.guard.done(self)
        _http_on_headers_complete(self)
        # A keep-alive connection is closed at a clean point: right after the response to its next request.
        if wsup.draining and self.cycle is not None:
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

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.wsup = _connections_of(server_state)
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
        self.wsup.lost()

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
