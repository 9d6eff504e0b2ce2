"""Connection-aware steering: keep the reuseport group's BPF program current with the workers' live loads.

``Steering`` feeds every report to a ``LoadTracker`` and re-attaches the program it plans when the weights change,
at most once per ``min_interval``, and at once when a slot stops or starts taking connections (a worker ready,
crashed or silent). If the kernel refuses the program (not Linux, an old kernel, a locked filter), wsup falls
back to the kernel's hash, logs why, and ``wsup status`` shows it.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from supervisor.balancing import SlotLoad
from supervisor.bpf import SteeringUnavailableError, attach_program, build_weighted_program, detach_program
from supervisor.load_tracker import LoadTracker, Plan

logger = logging.getLogger("wsup.steering")
# The bound on re-attaching is every 100-250 ms: the fastest keeps the last, unsteerable batch of a
# burst smallest (its random spread is what remains at the end).
MIN_INTERVAL_S = 0.1


class Steering:
    """The supervisor's steering state: the mode, the program in force, and the tracker that plans the next one."""

    def __init__(self, requested: str, *, min_interval: float = MIN_INTERVAL_S) -> None:
        self.requested = requested
        self.mode = requested if sys.platform.startswith("linux") else "hash"
        self.reason: str | None = None if self.mode == requested else "not Linux: the kernel's hash is used"
        self.min_interval = min_interval
        self.weights: list[int] = []
        self.loads: list[SlotLoad] = []
        self.plan: Plan | None = None
        self.tracker = LoadTracker()
        self.attaches = 0
        self.attach_seconds = 0.0
        self._last_plan = 0.0
        self._out: set[int] = set()  # slots that took no new connections at the last plan

    def update(
        self,
        listeners: Sequence[socket.socket],
        loads: Sequence[SlotLoad],
        *,
        force: bool = False,
        returning: float | None = None,
    ) -> None:
        """Recompute the weights from ``loads`` (slot order) and re-attach the program if they changed.

        Called on every worker report and supervisor tick; cheap when it has nothing to do.
        """
        if self.mode != "least-conn" or not listeners:
            return
        now = time.monotonic()
        self.tracker.observe(now, loads)
        # A slot that stops taking connections (crashed, draining, silent) must be left out now, not at the next
        # interval: every connection steered to it meanwhile waits or is lost. One that comes back is refilled.
        out = {load.slot for load in loads if not load.eligible} | set(self.tracker.stalled(now, loads))
        changed = out != self._out or len(loads) != len(self.weights)
        if not force and not changed and now - self._last_plan < self.min_interval:
            return
        self._last_plan = now
        plan = self.tracker.plan(now, loads, returning=returning)
        self._log_stalls(plan.stalled)
        self.loads, self.plan, self._out = list(loads), plan, out
        if plan.weights == self.weights and not force:
            return
        started = time.perf_counter()
        try:
            # Any listening member of the group can replace the group's program, atomically.
            attach_program(listeners[0], build_weighted_program(plan.weights))
        except SteeringUnavailableError as exc:
            self.fall_back(listeners, str(exc))
            return
        self.attach_seconds += time.perf_counter() - started
        self.attaches += 1
        self.weights = plan.weights
        self.tracker.attached(now, plan.weights)

    def _log_stalls(self, stalled: list[int]) -> None:
        before = set(self.plan.stalled) if self.plan else set()
        if set(stalled) - before:
            logger.warning("steering: slots %s get no new connections: their event loops are silent", stalled)
        if before - set(stalled):
            logger.info("steering: slots %s are no longer left out for silence", sorted(before - set(stalled)))

    def fall_back(self, listeners: Sequence[socket.socket], reason: str) -> None:
        logger.warning("connection steering is off, using the kernel's hash: %s", reason)
        self.mode, self.reason, self.weights = "hash", reason, []
        if listeners:
            try:
                detach_program(listeners[0])
            except SteeringUnavailableError:
                pass

    def describe(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "mode": self.mode,
            "requested": self.requested,
            "reason": self.reason,
            "weights": list(self.weights),
            "updates": self.attaches,
            "mean_attach_us": round(self.attach_seconds / self.attaches * 1e6, 1) if self.attaches else None,
            # Why the weights are what they are: slots left out because their worker went silent (before the
            # supervisor's own, slower, stall_after makes them ineligible), the connections each slot is
            # expected to take before the next update, and the measured rates.
            "stalled": plan.stalled if plan else [],
            "lookahead": round(plan.lookahead, 1) if plan else None,
            "arrivals_per_s": round(plan.arrivals_per_s, 1) if plan else None,
            "churn_per_s": round(plan.churn_per_s, 1) if plan else None,
        }
