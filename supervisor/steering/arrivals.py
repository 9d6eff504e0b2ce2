"""Wake the supervisor when a connection arrives, without polling and without touching the connection.

The supervisor owns every slot's listening socket. Watching them for readability (a connection is in an accept
queue) wakes it on the first connection of a burst, so steering can start correcting at once. The watch is
one-shot: after it fires it is off until ``arm`` is called again, which steering does ``next_check`` seconds later.
So the cost is bounded by that cadence (at most ~20 wake-ups a second outside a burst, none when nothing arrives),
never by the connection rate. The supervisor never accepts: the connection stays in the queue for its worker.

Why not a timer: on this project's machines (a microVM) a timer wake-up of an idle Python process costs ~50-90 µs
of CPU, so sampling every 2 ms whether anything arrived would cost ~5% of a core with nothing going on.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence


class ArrivalWatch:
    def __init__(self, on_arrival: Callable[[], None]) -> None:
        self._on_arrival = on_arrival
        self._watched: list[int] = []
        self._rearm: asyncio.TimerHandle | None = None

    def arm(self, listeners: Sequence[socket.socket]) -> None:
        """Call ``on_arrival`` once, at the next connection in any of ``listeners``' accept queues."""
        self.disarm()
        loop = asyncio.get_running_loop()
        for listener in listeners:
            fd = listener.fileno()
            if fd >= 0:
                loop.add_reader(fd, self._fired)
                self._watched.append(fd)

    def arm_later(self, delay: float, listeners: Callable[[], Sequence[socket.socket]]) -> None:
        """``arm`` the then-current listeners after ``delay`` seconds."""
        self.disarm()
        self._rearm = asyncio.get_running_loop().call_later(delay, lambda: self.arm(listeners()))

    def disarm(self) -> None:
        """Stop watching. Call it before closing a watched listener: its fd number may be reused at once."""
        if self._rearm is not None:
            self._rearm.cancel()
            self._rearm = None
        if self._watched:
            loop = asyncio.get_running_loop()
            for fd in self._watched:
                loop.remove_reader(fd)
            self._watched.clear()

    def _fired(self) -> None:
        self.disarm()
        self._on_arrival()
