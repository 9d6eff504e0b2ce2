"""The live dashboard's feed (supervisor process): the page, a few minutes of history, and server-sent events.

While at least one dashboard is open, one frame (``Operators.dashboard_frame``) is built and encoded per tick and
written to every open dashboard: the cost does not grow with the number of viewers beyond one write each, and with
none open nothing is built. A viewer that does not keep up (its socket buffer past ``MAX_BUFFER_BYTES``) is dropped
rather than buffered without bound. The page itself is one static file with inline CSS, JS and SVG: it works
offline and needs no build step.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import orjson

logger = logging.getLogger("wsup.supervisor")
TICK_S = 0.25  # at most four frames a second: bars move smoothly, the supervisor barely notices
HISTORY_S = 300  # the time chart's span; one sample a second (``record``)
MAX_VIEWERS = 32
MAX_BUFFER_BYTES = 256 * 1024


def page() -> bytes:
    return resources.files("supervisor.process").joinpath("dashboard.html").read_bytes()


class DashboardFeed:
    def __init__(self, frame: Callable[[], dict[str, Any]]) -> None:
        self._frame = frame
        self._viewers: set[asyncio.StreamWriter] = set()
        self._someone = asyncio.Event()
        self.history: collections.deque[list[Any]] = collections.deque(maxlen=HISTORY_S)
        self.dropped_viewers = 0

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def record(self) -> None:
        """One history sample: per slot, live connections and the requests total (the page derives rates)."""
        frame = self._frame()
        sample: list[Any] = [round(time.time(), 1)]
        live: dict[int, int] = {}
        for row in [s["worker"] for s in frame["slots"] if s["worker"]] + frame["draining"]:
            live[row["slot"]] = live.get(row["slot"], 0) + row["http"] + row["ws"]
        sample.append([[s["slot"], live.get(s["slot"], 0), s["requests"]] for s in frame["slots"]])
        self.history.append(sample)

    @property
    def full(self) -> bool:
        return len(self._viewers) >= MAX_VIEWERS

    def subscribe(self, writer: asyncio.StreamWriter) -> None:
        """Start streaming to ``writer`` (the response head is already written; the caller checked ``full``)."""
        writer.write(b"event: history\ndata: " + orjson.dumps(list(self.history)) + b"\n\n")
        writer.write(b"data: " + orjson.dumps(self._frame()) + b"\n\n")
        self._viewers.add(writer)
        self._someone.set()

    def unsubscribe(self, writer: asyncio.StreamWriter) -> None:
        self._viewers.discard(writer)
        if not self._viewers:
            self._someone.clear()

    async def run(self) -> None:
        while True:
            await self._someone.wait()
            message = b"data: " + orjson.dumps(self._frame()) + b"\n\n"
            for writer in list(self._viewers):
                transport = writer.transport
                if transport.is_closing() or transport.get_write_buffer_size() > MAX_BUFFER_BYTES:
                    self.dropped_viewers += 1
                    self.unsubscribe(writer)
                    transport.abort()
                    continue
                writer.write(message)
            await asyncio.sleep(TICK_S)

    def close(self) -> None:
        for writer in list(self._viewers):
            writer.transport.abort()
        self._viewers.clear()
