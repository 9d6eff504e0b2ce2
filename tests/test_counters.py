"""The connection counters a worker shares with its supervisor: one page, written by a real child process."""

from __future__ import annotations

import subprocess
import sys
import time

from ipc.counters import ACCEPTED, CLOSED, HEARTBEAT, ConnectionCounters, local_cells

CHILD = """
import sys
from ipc.counters import ACCEPTED, CLOSED, ConnectionCounters
cells = ConnectionCounters.attach(int(sys.argv[1])).cells
for _ in range(1000):
    cells[ACCEPTED] += 1
for _ in range(400):
    cells[CLOSED] += 1
"""


def test_a_child_process_counts_into_the_supervisors_page() -> None:
    counters = ConnectionCounters.create()
    try:
        assert counters.read() == (0, 0) and counters.read().live == 0
        subprocess.run([sys.executable, "-c", CHILD, str(counters.fd)], pass_fds=(counters.fd,), check=True)
        counters.close_fd()  # the mapping outlives the fd, as in the supervisor once the worker has it
        snapshot = counters.read()
        assert snapshot == (1000, 400) and snapshot.live == 600
    finally:
        counters.close()


def test_each_worker_gets_a_page_of_its_own() -> None:
    first, second = ConnectionCounters.create(), ConnectionCounters.create()
    try:
        first.cells[ACCEPTED] += 5
        assert second.read() == (0, 0) and first.read() == (5, 0)
    finally:
        first.close()
        second.close()


def test_local_cells_count_without_a_supervisor() -> None:
    cells = local_cells()
    cells[ACCEPTED] += 2
    cells[CLOSED] += 1
    assert (cells[ACCEPTED], cells[CLOSED]) == (2, 1)


HEARTBEAT_CHILD = """
import sys
from ipc.counters import ConnectionCounters, beat
beat(ConnectionCounters.attach(int(sys.argv[1])).cells)
"""


def test_a_childs_heartbeat_is_read_on_the_supervisors_clock() -> None:
    counters = ConnectionCounters.create()
    try:
        assert counters.heartbeat(time.monotonic()) is None  # no tick yet
        before = time.monotonic()
        subprocess.run([sys.executable, "-c", HEARTBEAT_CHILD, str(counters.fd)], pass_fds=(counters.fd,), check=True)
        after = time.monotonic()
        beat_at = counters.heartbeat(after)
        # CLOCK_MONOTONIC is the host's: the child's time falls between the parent's two readings.
        assert beat_at is not None and before <= beat_at <= after
    finally:
        counters.close()


def test_a_heartbeat_from_the_future_is_not_trusted() -> None:
    counters = ConnectionCounters.create()
    try:
        now = time.monotonic()
        counters.cells[HEARTBEAT] = int((now + 60) * 1e6)  # anything in the page may be written by the worker
        assert counters.heartbeat(now) is None
        counters.cells[HEARTBEAT] = 2**64 - 1
        assert counters.heartbeat(now) is None
    finally:
        counters.close()
