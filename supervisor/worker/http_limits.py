"""HTTP limits a worker enforces on its connections (runs in each worker): request-line and header size, the time a
client has to send its headers (slowloris), the time a new connection may stay silent, and a cap on connections.

httptools gives uvicorn no header limit and uvicorn has no header timeout, so a client could grow a worker by the
size of one header (128 MiB was measured) or hold a connection forever with a byte a second. The protocol counts
header bytes itself (``WsupHttpProtocol.data_received``); the timeouts are coarse: the protocol only records the
current tick when a connection starts waiting (no timer per request), and one sweep a tick closes what waited too
long. A timeout is then enforced within one tick (0.5 s) after its value, never before.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import resource
import termios
import time
from dataclasses import dataclass
from typing import Final, Protocol

from ipc.messages import MAX_COUNT

logger = logging.getLogger("wsup.worker")

TICK_S: Final = 0.5
_FD_MARGIN: Final = 128  # descriptors left to the app (files, database connections) under an automatic cap
_LOG_EVERY_S: Final = 10.0
_REASONS: Final = {
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
    503: b"HTTP/1.1 503 Service Unavailable\r\n",
}


def automatic_max_connections() -> int:
    """The soft descriptor limit less a margin: past it accept() fails with EMFILE, which is worse than a 503."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(64, soft - _FD_MARGIN)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The limits, in bytes and seconds (0 turns a timeout off). The defaults are what a worker without settings
    (a test, a protocol used outside wsup) enforces."""

    max_header_bytes: int = 64 * 1024
    header_timeout: float = 20.0
    idle_timeout: float = 10.0
    max_connections: int = 1 << 62


class _Guarded(Protocol):
    transport: asyncio.Transport


class ConnectionGuard:
    """Connections waiting for their first byte or the end of their headers, and since which tick."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.tick = 0
        self._idle_ticks = _ticks(limits.idle_timeout)
        self._header_ticks = _ticks(limits.header_timeout)
        # Protocol -> the tick it times out at. Public: the HTTP protocol writes it inline on its request path
        # (supervisor.worker.http_protocol), with idle_deadline at a new connection (as wait_idle does) and
        # header_deadline at a request's first bytes, and removes it once the headers are complete.
        self.waiting: dict[_Guarded, int] = {}
        self.idle_deadline = 0
        self.header_deadline = 0
        self._set_deadlines()
        self.closed_idle = 0
        self.closed_headers = 0
        self.refused = {431: 0, 503: 0}
        self.closed_body = 0  # answered before their body arrived, and closed rather than read to the end
        self._logged_at = 0.0

    def _set_deadlines(self) -> None:
        """The deadline of a connection that starts waiting in this tick (0: that timeout is off). The current tick
        is partly over: a deadline is one tick later, never early."""
        self.idle_deadline = self.tick + self._idle_ticks + 1 if self._idle_ticks else 0
        self.header_deadline = self.tick + self._header_ticks + 1 if self._header_ticks else 0

    def wait_idle(self, protocol: _Guarded) -> None:
        """A new connection: it has --idle-timeout to send its first byte."""
        if self.idle_deadline:
            self.waiting[protocol] = self.idle_deadline

    def done(self, protocol: _Guarded) -> None:
        self.waiting.pop(protocol, None)

    def closed_unread_body(self) -> None:
        self.closed_body += 1

    def describe(self) -> dict[str, int]:
        """What each limit refused or closed since the worker started, keyed by the option that sets it (what the
        worker reports, and ``wsup status`` shows). Capped at the codec's range, which a worker never reaches."""
        return {
            "max_header_bytes": min(self.refused[431], MAX_COUNT),
            "max_connections": min(self.refused[503], MAX_COUNT),
            "header_timeout": min(self.closed_headers, MAX_COUNT),
            "idle_timeout": min(self.closed_idle, MAX_COUNT),
            "unread_body": min(self.closed_body, MAX_COUNT),
        }

    def refuse(self, protocol: _Guarded, status: int) -> None:
        """Answer ``status`` and close: headers too large (431), or the worker at its connection cap (503)."""
        self.done(protocol)
        self.refused[status] += 1
        transport = protocol.transport
        if not transport.is_closing():
            transport.write(_REASONS[status] + b"connection: close\r\ncontent-length: 0\r\n\r\n")
            transport.close()
        self._log()

    def on_tick(self) -> None:
        """Every TICK_S (the worker's clock, supervisor.worker.clock): close the connections whose deadline has come."""
        self.advance()
        try:
            self.sweep()
        except Exception:  # never seen; the sweep must outlive any one connection's surprise
            logger.exception("HTTP limits: sweep failed")

    def advance(self) -> None:
        """The next tick."""
        self.tick += 1
        self._set_deadlines()

    def sweep(self) -> None:
        tick = self.tick
        expired = [protocol for protocol, deadline in self.waiting.items() if deadline <= tick]
        for protocol in expired:
            if _unread_bytes(protocol.transport):
                # The client has spoken; this worker has not read it yet (its loop is behind, e.g. in a reconnect
                # storm, or reading is paused behind a pipelined request). The timeouts are for silent clients:
                # closing would punish the client for our delay and send it back into the storm.
                self.waiting[protocol] = tick + 1
                continue
            del self.waiting[protocol]
            if getattr(protocol, "header_bytes", 0) > 0:
                self.closed_headers += 1
            else:
                self.closed_idle += 1
            protocol.transport.close()
        if expired:
            self._log()

    def _log(self) -> None:
        now = time.monotonic()
        if now - self._logged_at < _LOG_EVERY_S:
            return
        self._logged_at = now
        logger.warning(
            "HTTP limits so far: %d connections refused at the cap (--max-connections %d), %d requests with headers"
            " over --max-header-bytes %d, %d closed by --header-timeout, %d by --idle-timeout",
            self.refused[503],
            self.limits.max_connections,
            self.refused[431],
            self.limits.max_header_bytes,
            self.closed_headers,
            self.closed_idle,
        )


def _unread_bytes(transport: asyncio.Transport) -> bool:
    """Whether the kernel holds bytes from the peer that the event loop has not read yet (one ioctl, only for a
    connection whose deadline has come)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    pending = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, pending, True)
    except (OSError, ValueError):  # closed meanwhile (fileno -1): nothing to wait for
        return False
    return pending[0] > 0


def _ticks(seconds: float) -> int:
    """Whole ticks, rounded up (0: off)."""
    return 0 if seconds <= 0 else max(1, -int(-seconds // TICK_S))
