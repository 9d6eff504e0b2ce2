"""A worker slot: one listening socket, the worker currently serving it, and its restart policy.

Restarts back off exponentially while a slot keeps failing, so a crash loop is reported instead of spinning; a
worker that served healthily for a while resets the count, so a rare crash is replaced at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.worker_process import WorkerProcess

HEALTHY_RUN_S = 10.0  # a worker that was ready this long before exiting counts as healthy: no backoff
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 30.0
CRASH_LOOP_FAILURES = 3


def restart_delay(failures: int) -> float:
    """Seconds to wait before starting a slot's next worker after ``failures`` consecutive failures."""
    if failures <= 0:
        return 0.0
    return float(min(BACKOFF_BASE_S * 2 ** (failures - 1), BACKOFF_MAX_S))


@dataclass
class Slot:
    index: int
    worker: WorkerProcess | None = None
    restarts: int = 0  # workers started on this slot after the first one
    spawned: int = 0
    failures: int = 0  # consecutive exits that were not preceded by a healthy run
    next_start_at: float = 0.0  # monotonic time before which no new worker is started
    last_error: str | None = None
    retiring: bool = False  # being removed by a scale-down: never restarted

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
