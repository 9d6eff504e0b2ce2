"""The supervisor's listening sockets: one per worker slot, in one SO_REUSEPORT group, open for the instance's life.

A socket's index in the group is the order in which it called ``listen()``. With least-conn steering the group
starts with a *shared* socket that every worker accepts from (one queue, as ``uvicorn --workers`` has), then slot i
is created i-th: group index i + 1, which the steering program returns. Without it slot i is group index i.
A replacement worker inherits the same fds, so no queued connection is ever reset. Never ``shutdown()`` one of
these: that would stop it for every process holding it.

Why a shared queue: a queue per worker is what lets steering place each connection, but a connection in a busy
worker's queue waits while another worker idles. For a stream of short connections that cost plain uvicorn 11-19%
of its requests/s in two runs of three (bench/reuseport_uvicorn.py, ``Connection: close``, 2 workers); steering
sends such streams to the shared queue (``supervisor.steering.load_tracker``, ``Plan.shared_share``).
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass, field

from ipc.errors import ConfigError, PortInUseError
from supervisor.steering.tcp_info import queued_in

logger = logging.getLogger("wsup.listeners")
DEFAULT_BACKLOG = 2048


@dataclass(frozen=True, slots=True)
class Address:
    family: socket.AddressFamily
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if self.family == socket.AF_INET6 else self.host
        return f"http://{host}:{self.port}"


def resolve(host: str, port: int) -> Address:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return Address(family, str(sockaddr[0]), port)


def _check_free(address: Address) -> None:
    """Fail if anyone holds the port, even a SO_REUSEPORT group we would otherwise silently join."""
    probe = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address.host, address.port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"{address.host}:{address.port} is already in use: stop what listens there or pass another --port"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"cannot listen on {address.host}: no such local address; check --host") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"no permission to listen on port {address.port}: use a port above 1023") from None
        raise
    finally:
        probe.close()


def _new_listener(address: Address, backlog: int) -> socket.socket:
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class ListenerGroup:
    """The group's sockets, indexed by slot. Growth appends; shrinking closes the highest slot only."""

    address: Address
    backlog: int = DEFAULT_BACKLOG
    sockets: list[socket.socket] = field(default_factory=list)
    shared: socket.socket | None = None  # group index 0, held by every worker; None: no shared queue

    @classmethod
    def open(
        cls, address: Address, count: int, backlog: int = DEFAULT_BACKLOG, *, shared_queue: bool = False
    ) -> ListenerGroup:
        if address.port != 0:
            _check_free(address)
        group = cls(address, backlog)
        try:
            if shared_queue:
                group.shared = group._listen()
            group.grow(count)
        except BaseException:
            group.close()
            raise
        return group

    def grow(self, count: int) -> None:
        while len(self.sockets) < count:
            self.sockets.append(self._listen())

    def _listen(self) -> socket.socket:
        sock = _new_listener(self.address, self.backlog)
        if self.address.port == 0:
            # Port 0: the first socket picks the port; every other one joins that one.
            self.address = Address(self.address.family, self.address.host, sock.getsockname()[1])
        return sock

    @property
    def shared_fileno(self) -> int:
        """The shared socket's fd, for the workers; -1 without one."""
        return self.shared.fileno() if self.shared is not None else -1

    def shrink(self, count: int) -> None:
        while len(self.sockets) > count:
            self.sockets.pop().close()

    def queued(self, slot: int) -> int:
        return queued_in(self.sockets, slot)

    def fileno(self, slot: int) -> int:
        return self.sockets[slot].fileno()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        if self.shared is not None:
            self.shared.close()
            self.shared = None
