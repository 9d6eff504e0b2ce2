"""A worker server's connection counts, drain state and HTTP limits: one object, shared by every protocol instance
of the server (runs in each worker)."""

from __future__ import annotations

from collections.abc import Callable

from ipc.counters import local_cells
from supervisor.worker.http_limits import ConnectionGuard, HttpLimits
from supervisor.worker.keepalive import PingWheel

MIN_CLOSE_CODE, MAX_CLOSE_CODE = 1000, 4999
MAX_CLOSE_CODES = 32  # distinct codes counted per worker; more (a peer inventing them) are counted as 1006


class WorkerConnections:
    """One server's connection counts, drain state and HTTP limits, shared by all of its protocol instances."""

    __slots__ = (
        "cells", "websocket_live", "websocket_opened", "close_codes", "draining", "on_lost", "limits", "guard",
        "pings", "local_address",
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
        # Every connection's own address when the listeners are bound to one (see listening_address), else None.
        self.local_address: tuple[str, int] | None = None

    def closed_with(self, code: int) -> None:
        if not MIN_CLOSE_CODE <= code <= MAX_CLOSE_CODE:
            code = 1006  # not a code a peer may send: counted as an abnormal close, never as a new label
        if code not in self.close_codes and len(self.close_codes) >= MAX_CLOSE_CODES:
            code = 1006  # a peer inventing codes cannot grow the report (or the metrics) without bound
        self.close_codes[code] = self.close_codes.get(code, 0) + 1

    def describe_closes(self) -> dict[str, int]:
        return {str(code): count for code, count in self.close_codes.items()}
