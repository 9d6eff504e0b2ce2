"""The supervisor's listening sockets: one per worker slot, in one SO_REUSEPORT group, open for the instance's life.

A socket's index in the group is the order in which it called ``listen()``; slot i is created i-th, so slot i is
group index i, which the steering program returns. A replacement worker inherits the same fd, so no queued
connection is ever reset. Never ``shutdown()`` one of these: that would stop it for every process holding it.
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

    @classmethod
    def open(cls, address: Address, count: int, backlog: int = DEFAULT_BACKLOG) -> ListenerGroup:
        if address.port != 0:
            _check_free(address)
        group = cls(address, backlog)
        try:
            group.grow(count)
        except BaseException:
            group.close()
            raise
        return group

    def grow(self, count: int) -> None:
        while len(self.sockets) < count:
            sock = _new_listener(self.address, self.backlog)
            if self.address.port == 0:
                # Port 0: the first socket picks the port; every other slot joins that one.
                self.address = Address(self.address.family, self.address.host, sock.getsockname()[1])
            self.sockets.append(sock)

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
