"""supervisor/worker/http_limits.py: the idle/header sweep closes silent connections, never one whose bytes the
worker simply has not read yet (its loop behind in a reconnect storm), on real sockets and a real event loop."""

from __future__ import annotations

import asyncio
import socket

from supervisor.worker.http_limits import ConnectionGuard, HttpLimits


class _Held(asyncio.Protocol):
    """A connection the loop does not read: its transport is paused, so whatever arrives stays in the kernel."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()


async def _held_connection() -> tuple[_Held, socket.socket, socket.socket]:
    """The held protocol, its socket (the server's end) and the client's end."""
    ours, peer = socket.socketpair()
    _, protocol = await asyncio.get_running_loop().connect_accepted_socket(_Held, ours)
    return protocol, ours, peer


def test_the_sweep_closes_a_silent_connection_but_not_one_with_unread_bytes() -> None:
    async def scenario() -> None:
        guard = ConnectionGuard(HttpLimits(idle_timeout=1.0))
        silent, _, silent_peer = await _held_connection()
        spoken, _, spoken_peer = await _held_connection()
        for protocol in (silent, spoken):
            guard.wait_idle(protocol)
        spoken_peer.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # arrived, not read: the loop is "behind"
        for _ in range(3):  # 1 s is 2 ticks; the tick it started in is never counted
            guard.advance()
            guard.sweep()
        assert silent.transport.is_closing()
        assert not spoken.transport.is_closing()
        assert guard.describe()["idle_timeout"] == 1
        spoken.transport.resume_reading()  # read at last: the connection is served, nothing was lost
        spoken.transport.close()
        for peer in (silent_peer, spoken_peer):
            peer.close()

    asyncio.run(scenario())


def test_a_connection_whose_bytes_were_read_late_is_still_closed_if_it_then_stays_silent() -> None:
    async def scenario() -> None:
        guard = ConnectionGuard(HttpLimits(idle_timeout=1.0))
        held, ours, peer = await _held_connection()
        guard.wait_idle(held)
        peer.sendall(b"G")
        for _ in range(3):
            guard.advance()
            guard.sweep()
        assert not held.transport.is_closing()
        # The loop catches up and reads the byte (here: drained by hand), then the client sends nothing more.
        ours.recv(1)
        guard.advance()
        guard.sweep()
        assert held.transport.is_closing()
        peer.close()

    asyncio.run(scenario())
