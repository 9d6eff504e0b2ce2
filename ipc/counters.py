"""Connection counters a worker shares with its supervisor through memory: readable at any instant, no message.

Reports over ZeroMQ come from the worker's event loop, and a burst of connections keeps that loop busy: during
400 WebSocket connects at once, reports reached the supervisor 50-800 ms late, while the kernel places every SYN
with the steering program in force at that microsecond. Steering has to know where connections went *now*. Two
integers in a shared page, written only by the worker (in ``connection_made``/``connection_lost``) and read by the
supervisor whenever it plans, tell it with no delay and no message. The ZeroMQ report stays what ``wsup status``
and the heartbeat are made of.

Each worker gets a page of its own (a replacement and the worker it replaces run side by side), created by the
supervisor as a memfd and inherited through ``pass_fds``. Each cell has one writer; an aligned 8-byte store is
atomic on the 64-bit machines wsup runs on, so a reader never sees a torn value.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import time
from typing import NamedTuple

ACCEPTED = 0  # TCP connections the worker accepted (a WebSocket starts as an HTTP connection and is counted once)
CLOSED = 1  # of those, connections that ended (as HTTP, or as the WebSocket they were upgraded to)
# Written by the supervisor, read by the worker when MOVE_WEBSOCKETS (ipc.signals) arrives: the window in ms plus
# one over which to close its WebSockets, or 0 to cancel the closes not done yet (`wsup resume`).
MOVE_WINDOW = 2
MAX_MOVE_WINDOW_MS = 3_600_000
# Written by the worker's event loop at every reporter tick: CLOCK_MONOTONIC in µs (shared by every process on the
# host). The supervisor reads it as the loop's heartbeat, so a silent loop is seen without a message every tick.
HEARTBEAT = 3
_CELLS = 4
_SIZE = mmap.PAGESIZE


class CounterSnapshot(NamedTuple):
    accepted: int
    closed: int

    @property
    def live(self) -> int:
        return self.accepted - self.closed


class ConnectionCounters:
    """One worker's counters. The supervisor ``create``s them; the worker ``attach``es to the inherited fd."""

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, _SIZE)
        # A memoryview cast to unsigned 64-bit cells: `cells[i] += 1` is the whole cost on the connection path.
        self.cells = memoryview(self._map).cast("Q")
        self.fd = fd

    @classmethod
    def create(cls) -> ConnectionCounters:
        """A zeroed page for a new worker; pass ``fd`` to it, then ``close_fd`` once it is spawned."""
        try:
            fd = os.memfd_create("wsup-counters", os.MFD_CLOEXEC)
        except (AttributeError, OSError):  # no memfd (not Linux): an unlinked file does the same
            with tempfile.TemporaryFile() as file:
                fd = os.dup(file.fileno())
        os.ftruncate(fd, _SIZE)
        return cls(fd)

    @classmethod
    def attach(cls, fd: int) -> ConnectionCounters:
        """The worker's side: map the page the supervisor passed as ``fd``."""
        return cls(fd)

    def read(self) -> CounterSnapshot:
        cells = self.cells
        # Closed first: a connection accepted between the two reads can only make `live` one too high, never
        # negative.
        closed = cells[CLOSED]
        return CounterSnapshot(cells[ACCEPTED], closed)

    def heartbeat(self, now: float) -> float | None:
        """The supervisor's side: when the worker's event loop last ticked (``time.monotonic()`` seconds), or None
        before its first tick. Range-checked: a time after ``now`` is not a heartbeat (the page is shared memory)."""
        raw = int(self.cells[HEARTBEAT])
        beat = raw / 1e6
        return beat if raw and beat <= now else None

    def request_move(self, window_s: float | None) -> None:
        """The supervisor's side: what the next MOVE_WEBSOCKETS signal means (``None``: cancel)."""
        ms = 0 if window_s is None else 1 + min(MAX_MOVE_WINDOW_MS, max(0, round(window_s * 1000)))
        self.cells[MOVE_WINDOW] = ms

    def close_fd(self) -> None:
        """Close the fd (the mapping stays); the supervisor does this once the worker has inherited it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        self.close_fd()
        self.cells.release()
        self._map.close()


def move_window(cells: memoryview) -> float | None:
    """The worker's side: the window of the move the supervisor asked for, in seconds, or None for "cancel".
    Range-checked: the page is shared memory, and a value past the limit is clamped, not trusted."""
    raw = int(cells[MOVE_WINDOW])
    if raw == 0:
        return None
    return min(MAX_MOVE_WINDOW_MS, raw - 1) / 1000


def beat(cells: memoryview) -> None:
    """The worker's side: record that its event loop is running now (see HEARTBEAT)."""
    cells[HEARTBEAT] = time.monotonic_ns() // 1000


def local_cells() -> memoryview:
    """Cells backed by private memory: where a protocol counts when no supervisor shares a page (tests, tools)."""
    return memoryview(bytearray(8 * _CELLS)).cast("Q")
