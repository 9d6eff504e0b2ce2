"""The fleet's table: slots (one listening socket each, the worker serving it, a replacement starting for it, its
restart policy), the draining workers, and the handle interface the fleet drives workers through.

Restarts back off exponentially while a slot keeps failing, so a crash loop is reported instead of spinning; a
worker that served healthily for a while resets the count, so a rare crash is replaced at once. Only
``supervisor.process.fleet.Fleet`` writes these records; everyone else reads them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ipc.counters import ConnectionCounters
from ipc.messages import Report
from supervisor.process.worker_state import WorkerState

HEALTHY_RUN_S = 10.0  # a worker that was ready this long before exiting counts as healthy: no backoff
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 30.0
CRASH_LOOP_FAILURES = 3


class WorkerHandle(Protocol):
    """What the fleet needs of a worker process (``WorkerProcess``; unit tests drive the fleet with plain objects)."""

    pid: int
    state: WorkerState
    error: str | None
    started_at: float  # monotonic
    ready_at: float | None
    ready: asyncio.Future[None]  # resolved by READY, failed by a start failure or an exit before it
    exited: asyncio.Future[int]
    last_report: Report | None
    counters: ConnectionCounters | None  # its live connection counts, shared in memory

    @property
    def slot(self) -> int: ...

    @property
    def generation(self) -> int: ...

    def on_ready(self) -> None:
        """Its READY message arrived."""

    def on_failed(self, error: str) -> None:
        """Its FAILED message arrived."""

    def on_report(self, report: Report) -> None:
        """A report (and heartbeat) arrived."""

    def drain(self, sig: int) -> None:
        """Move to DRAINING and send ``sig`` (one of ``ipc.signals``)."""

    def kill_tree(self) -> None:
        """SIGKILL the worker and every process it started."""

    def report_age(self) -> float:
        """Seconds since its last message (its event loop's heartbeat)."""

    def poll_exit(self) -> None:
        """Notice an exit that was not signalled (``exited`` is normally set by the exit watch)."""

    def live_connections(self) -> int: ...

    @property
    def stderr_lines(self) -> list[str]:
        """The last lines it wrote to stderr (the error of a failed start)."""

    def usage(self) -> tuple[float, int]:
        """CPU percent since the last call, and RSS in bytes (0, 0 once gone)."""
        ...

    def last_counts(self) -> dict[str, int]:
        """Its last reported ``{"http": n, "websocket": m}``."""


def restart_delay(failures: int) -> float:
    """Seconds to wait before starting a slot's next worker after ``failures`` consecutive failures."""
    if failures <= 0:
        return 0.0
    return float(min(BACKOFF_BASE_S * 2 ** (failures - 1), BACKOFF_MAX_S))


@dataclass(eq=False)
class Slot:
    index: int
    worker: WorkerHandle | None = None  # the worker serving the slot (starting, then ready)
    candidate: WorkerHandle | None = None  # a replacement starting beside it; serves once promoted
    batch: Any = None  # the fleet's ReplaceBatch this slot belongs to while an operation replaces it
    removing: bool = False  # scale-down: drain the worker, then close the socket and drop the slot
    held: bool = False  # restart: no new worker until the old one has exited
    # The running reload, restart or recycle will replace this slot's worker and has not yet: steering sends it no
    # new connection while a slot that is not pending serves (a client sent there would be cut twice).
    pending: bool = False
    restarts: int = 0  # workers started on this slot after the first one
    spawned: int = 0
    failures: int = 0  # consecutive exits that were not preceded by a healthy run
    next_start_at: float = 0.0  # monotonic time before which no new worker is started
    last_error: str | None = None
    # Why the slot's worker was last replaced ("crash", "heartbeat", "start-timeout", "reload", "restart", or a
    # recycling limit), and how often for each reason: status and metrics show both; counts never go back.
    last_reason: str | None = None
    replacements: Counter[str] = field(default_factory=Counter)

    def replaced(self, reason: str) -> None:
        self.last_reason = reason
        self.replacements[reason] += 1

    @property
    def crash_loop(self) -> bool:
        return self.failures >= CRASH_LOOP_FAILURES

    def record_exit(self, now: float, ready_for: float | None, error: str | None) -> float:
        """Account for the slot's worker exiting unexpectedly; returns the delay before its replacement."""
        if ready_for is not None and ready_for >= HEALTHY_RUN_S:
            self.failures = 0
        else:
            self.failures += 1
        if error:
            self.last_error = error
        delay = restart_delay(self.failures)
        self.next_start_at = now + delay
        return delay


@dataclass(eq=False)
class Draining:
    """A worker that was told to drain, until it exits: replaced, removed by a scale-down, or stopping."""

    worker: WorkerHandle
    reason: str  # "reload", "restart", "scale", "stop", "failed-batch"
    deadline: float  # monotonic: past it, its process tree is killed
    counts: dict[str, int] = field(default_factory=dict)  # connections it held when told to drain
    since: float = 0.0
    on_exit: Callable[[Draining, float], None] | None = None  # told once it has exited, with the time
    killed: bool = False


def failed_to_start(worker: WorkerHandle | None) -> bool:
    """A worker that exited, or whose start failed (it will exit), before it was ready."""
    if worker is None:
        return False
    if worker.ready.done():
        return worker.ready.cancelled() or worker.ready.exception() is not None
    return worker.exited.done()


def start_error(worker: WorkerHandle) -> str | None:
    ready = worker.ready
    if ready.done() and not ready.cancelled() and ready.exception() is not None:
        return str(ready.exception())
    return None
