"""The worker's HTTP/1.1 protocol: uvicorn's httptools protocol, counting connections in the page the supervisor
reads, enforcing the HTTP limits (supervisor.worker.http_limits) and answering ``Connection: close`` once its worker
drains (runs in each worker)."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from ipc.counters import ACCEPTED, CLOSED
from supervisor.worker.worker_connections import WorkerConnections

_http_connection_lost = HttpToolsProtocol.connection_lost
_http_data_received = HttpToolsProtocol.data_received
_http_on_headers_complete = HttpToolsProtocol.on_headers_complete


class WsupHttpProtocol(HttpToolsProtocol):
    """httptools HTTP/1.1 that counts connections and answers with ``Connection: close`` once its worker drains."""

    # Slots, not instance attributes: uvicorn's protocol already keeps 28 attributes in its __dict__, and CPython
    # 3.11 shares a class's dict keys among its instances only up to 30. Two more turned every connection's dict
    # into a private one: 1.3 KiB more per connection, and every attribute access in uvicorn's request path off
    # its fast path (+27,000 instructions per `Connection: close` request, +11,500 per keep-alive one, measured
    # with callgrind; bench/protocol_cost.py).
    __slots__ = ("wsup", "header_bytes")
    server_connections: ClassVar[WorkerConnections]  # the server's, set on the class by protocol_classes

    # Every override below runs for every request, most of them as a callback from httptools' C parser, so there are
    # as few as the limits need, each calls uvicorn's method directly (no super() object), and the guard's
    # bookkeeping is inlined (a method call each was ~1,000 instructions; bench/protocol_cost.py --instructions).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Into a slot, read three more times per request: on CPython 3.11 reading a class attribute through an
        # instance is a generic lookup (~250 instructions), reading a slot is specialised.
        wsup = self.wsup = self.server_connections
        wsup.cells[ACCEPTED] += 1
        # uvicorn's HttpToolsProtocol.connection_made, inline: one Python call less per connection, and no
        # getsockname() system call (~0.7-1.4 µs here) when the listeners' address is every connection's own.
        # tests/test_protocols.py checks that it sets what uvicorn's sets.
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = wsup.local_address or get_local_addr(transport)
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = "{}:{} - ".format(*self.client) if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        # Bytes of the current request's line and headers, -1 between requests (httptools has no limit).
        self.header_bytes = 0
        guard = wsup.guard
        # uvicorn's set of this server's live connections (WebSockets included), which it just added this one to.
        if len(self.connections) > wsup.limits.max_connections:
            guard.refuse(self, 503)
            return
        if guard.idle_deadline:  # ConnectionGuard.wait_idle
            guard.waiting[self] = guard.idle_deadline

    def connection_lost(self, exc: Exception | None) -> None:
        # Not called for a connection upgraded to a WebSocket: the transport then belongs to the WebSocket protocol.
        wsup = self.wsup
        wsup.cells[CLOSED] += 1
        wsup.guard.waiting.pop(self, None)
        _http_connection_lost(self, exc)
        if wsup.on_lost is not None:
            wsup.on_lost()

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
            # The request's first bytes: from now on it has --header-timeout.
            guard = wsup.guard
            if guard.header_deadline:
                guard.waiting[self] = guard.header_deadline
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
        wsup.guard.waiting.pop(self, None)
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
