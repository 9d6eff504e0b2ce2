"""The supervisor's arrival watch on real listening sockets: one wake-up per arming, the connection left alone."""

from __future__ import annotations

import asyncio
import socket

from supervisor.steering.arrivals import ArrivalWatch
from tests.wsup_harness import eventually


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


# How long to watch for a wake-up that must not come: the absence of an event can only be checked over a window.
QUIET_S = 0.05


def test_the_watch_fires_once_per_arming_and_never_accepts() -> None:
    async def scenario() -> None:
        listeners = [_listener(), _listener()]
        fired: list[int] = []
        watch = ArrivalWatch(lambda: fired.append(1))
        clients: list[socket.socket] = []
        try:
            watch.arm(listeners)
            clients.append(socket.create_connection(listeners[1].getsockname()))
            await eventually(lambda: len(fired) == 1, "the first arrival to wake the watch", timeout=5.0)
            clients.append(socket.create_connection(listeners[0].getsockname()))
            await asyncio.sleep(QUIET_S)  # nothing more may fire: the watch is off until armed again
            assert len(fired) == 1
            # The connections are still queued for their worker: the watch only looked.
            for listener in listeners:
                accepted, _ = listener.accept()
                accepted.close()
            watch.arm_later(0.01, lambda: listeners)
            clients.append(socket.create_connection(listeners[0].getsockname()))
            await eventually(lambda: len(fired) == 2, "the re-armed watch to fire", timeout=5.0)
            watch.arm(listeners)
            watch.disarm()  # before a listener closes: nothing fires after
            clients.append(socket.create_connection(listeners[1].getsockname()))
            await asyncio.sleep(QUIET_S)
            assert len(fired) == 2
        finally:
            watch.disarm()
            for sock in clients + listeners:
                sock.close()

    asyncio.run(scenario())
