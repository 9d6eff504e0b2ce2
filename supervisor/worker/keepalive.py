"""One timer per worker for every WebSocket's keepalive ping, instead of one per connection (runs in each worker).

uvicorn schedules each connection's next ping with ``loop.call_later``: a uvloop ``TimerHandle`` and its libuv
timer, 612 bytes per idle WebSocket (measured over 50,000 handles), on a worker that holds tens of thousands. The
wheel keeps each connection in the set of the tick its ping is due at (~53 bytes) and wakes once per tick while
pings are pending. A ping goes out up to one tick late, never early. The pong deadline that follows a ping
(``--ws-ping-timeout``) stays uvicorn's own timer: it exists only while a ping is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Protocol

logger = logging.getLogger("wsup.worker")

MAX_TICK_S = 0.25  # how late a ping may go out, at most; shorter when the ping interval is short (tick_for)
_EARLY_S = 0.005  # a timer may fire this much before its time (the loop's clock resolution): its tick is due


class Pinged(Protocol):
    ping_due: int  # the tick its ping is due at, -1 when not in the wheel

    def send_keepalive_ping(self) -> None: ...


def tick_for(ping_interval: float) -> float:
    """The wheel's tick: an eighth of the interval, at most MAX_TICK_S (a 20 s interval: pings 0-0.25 s late)."""
    return min(MAX_TICK_S, max(0.001, ping_interval / 8))


class PingWheel:
    def __init__(self, loop: asyncio.AbstractEventLoop, tick_s: float) -> None:
        self._loop = loop
        self.tick_s = tick_s
        self._due: dict[int, set[Pinged]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_tick = 0

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._due.values())

    def add(self, protocol: Pinged, delay: float) -> None:
        """Ping ``protocol`` (``send_keepalive_ping``) ``delay`` seconds from now, or up to one tick later."""
        self.discard(protocol)
        tick = math.ceil((self._loop.time() + delay) / self.tick_s)
        bucket = self._due.get(tick)
        if bucket is None:
            bucket = self._due[tick] = set()
        bucket.add(protocol)
        protocol.ping_due = tick
        if self._timer is None or tick < self._timer_tick:
            self._arm(tick)

    def discard(self, protocol: Pinged) -> None:
        tick = protocol.ping_due
        if tick < 0:
            return
        protocol.ping_due = -1
        bucket = self._due.get(tick)
        if bucket is not None:
            bucket.discard(protocol)
            if not bucket:
                del self._due[tick]

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_tick = tick
        self._timer = self._loop.call_at(tick * self.tick_s, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now_tick = math.floor((self._loop.time() + _EARLY_S) / self.tick_s)
        for tick in sorted(tick for tick in self._due if tick <= now_tick):
            for protocol in self._due.pop(tick):
                protocol.ping_due = -1
                try:
                    protocol.send_keepalive_ping()  # may add it back (the next ping, with no pong deadline)
                except Exception:  # one connection's failure must not stop every other connection's pings
                    logger.exception("WebSocket keepalive ping failed")
        if self._due:
            self._arm(min(self._due))
