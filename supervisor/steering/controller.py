"""Connection-aware steering: keep the reuseport group's BPF program current with the workers' live loads.

``Steering`` hands the slots' loads (each worker's live connection count, read from memory it shares with the
supervisor, and the kernel's accept queues) to a ``LoadTracker`` and re-attaches the program it plans when the
weights change. It is called on every worker report (at most once per ``min_interval``), at once when a slot
stops or starts taking connections (a worker ready, crashed or silent), and on the first connection that arrives
after ``next_check`` seconds (``supervisor.steering.arrivals``): every 2 ms while connections pile up. If the kernel
refuses the program (not Linux, an old kernel, a locked filter), wsup falls back to the kernel's hash, logs why,
and ``wsup status`` shows it.

With ``--balance ip-hash`` the program is the sticky one of ``ip_hash`` instead, rebuilt only when a slot's role
(takes, holds, out) changes: loads do not move clients between slots.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from supervisor.steering.balancing import TOTAL_WEIGHT, SlotLoad
from supervisor.steering.bpf import (
    Instruction,
    SteeringUnavailableError,
    attach_program,
    build_weighted_program,
    detach_program,
)
from supervisor.steering.ip_hash import Role, build_ip_hash_program, moved, rebalance, shares
from supervisor.steering.load_tracker import LoadTracker, Plan

logger = logging.getLogger("wsup.steering")
# Between bursts the weights follow the workers' reports, at most every MIN_INTERVAL_S. While connections pile up
# (Plan.fast), every new one is a random draw from the program in force, so what is left at the end of a burst is
# the random spread of the connections placed under the last program: the program is rebuilt from the shared
# counts every FAST_INTERVAL_S. Measured, 400 WebSockets at once: max/min 1.24 (median of 8) with a 100 ms interval,
# as random as the kernel's hash, and 1.03-1.04 at 2 ms (13-38 programs per burst, ~20-40 µs each).
MIN_INTERVAL_S = 0.1
FAST_INTERVAL_S = 0.002
# With no burst going on, the first arrival after this long is checked at once: a burst is seen from its start.
SLOW_CHECK_S = 0.05
# While arrivals are sparse (Plan.exact), each one is seen within this long, so the next is placed on the new
# least-loaded slot. Short, because it is the placement's blind spot; it costs a wake-up per arrival, and exact
# placement only runs while arrivals are rare. Not 0: a connection still in an accept queue would re-fire at once.
EXACT_INTERVAL_S = 0.003
# ...and each arrival's plan is made once more this much later: the first can run between a worker's accept() and
# the count it keeps in shared memory going up.
EXACT_RECHECK_S = 0.02


class Steering:
    """The supervisor's steering state: the mode, the program in force, and the tracker that plans the next one."""

    def __init__(self, requested: str, *, min_interval: float = MIN_INTERVAL_S) -> None:
        self.requested = requested
        self.mode = requested if sys.platform.startswith("linux") else "hash"
        self.reason: str | None = None if self.mode == requested else "not Linux: the kernel's hash is used"
        self.min_interval = min_interval
        self.weights: list[int] = []
        # Whether the group starts with the shared socket (supervisor.process.listeners): then the program returns
        # slot i + 1 for slot i, and 0 for the shared queue, whose weight is ``shared_weight``.
        self.shared_queue = False
        self.shared_weight = 0
        self.loads: list[SlotLoad] = []
        self.plan: Plan | None = None
        self.tracker = LoadTracker()
        self.attaches = 0
        self.attach_seconds = 0.0
        self._last_plan = 0.0
        self._out: set[int] = set()  # slots that took no new connections at the last plan
        # ip-hash: the bucket table (bucket -> slot), the roles it was built for, and buckets moved so far.
        self.table: list[int] = []
        self.roles: list[Role] = []
        self.moved_buckets = 0

    def update(
        self,
        listeners: Sequence[socket.socket],
        loads: Sequence[SlotLoad],
        *,
        force: bool = False,
        returning: float | None = None,
        min_interval: float | None = None,
    ) -> None:
        """Recompute the weights from ``loads`` (slot order) and re-attach the program if they changed.

        Called on every worker report, supervisor tick and arrival check (see ``next_check``), at most once per
        ``min_interval`` (default: the instance's) unless a slot stopped or started taking connections.
        """
        if self.mode != "least-conn" or not listeners:
            return
        now = time.monotonic()
        self.tracker.observe(now, loads)
        # A slot that stops taking connections (crashed, draining, silent) must be left out now, not at the next
        # interval: every connection steered to it meanwhile waits or is lost. One that comes back is refilled.
        out = {load.slot for load in loads if not load.eligible} | set(self.tracker.stalled(now, loads))
        changed = out != self._out or len(loads) != len(self.weights)
        interval = self.min_interval if min_interval is None else min_interval
        if not force and not changed and now - self._last_plan < interval:
            return
        self._last_plan = now
        plan = self.tracker.plan(now, loads, returning=returning)
        self._log_stalls(plan.stalled)
        self.loads, self.plan, self._out = list(loads), plan, out
        weights, shared = self._split(plan)
        if weights == self.weights and shared == self.shared_weight and not force:
            return
        program = build_weighted_program([shared, *weights] if self.shared_queue else weights)
        if self._attach(listeners, program):
            self.weights, self.shared_weight = weights, shared

    def _split(self, plan: Plan) -> tuple[list[int], int]:
        """The slots' weights and the shared queue's, from the plan's weights and its shared share."""
        share = plan.shared_share if self.shared_queue else 0.0
        if share <= 0.0:
            return plan.weights, 0
        total = sum(plan.weights) or TOTAL_WEIGHT
        if share >= 1.0:
            return [0] * len(plan.weights), total
        return [round(weight * (1.0 - share)) for weight in plan.weights], round(total * share)

    def due(self, now: float) -> bool:
        """Whether ``min_interval`` has passed since the last plan: a routine worker report is planned from then on.

        Under load every worker reports up to twenty times a second; planning on each would cost O(workers) per
        report, O(workers²) a second (measured when idle workers still reported ten times a second: 8 of them cost
        the supervisor 5.6% of a core, mostly here).
        """
        return now - self._last_plan >= self.min_interval

    def placing_exactly(self) -> bool:
        """Whether arrivals are sparse: the program in force sends each one to a least-loaded slot (``Plan.exact``),
        or will once the last arrival is EXACT_SETTLE_S old (``Plan.settling``)."""
        return self.plan is not None and (self.plan.exact or self.plan.settling)

    def settling(self) -> bool:
        """Whether the program in force is the mild one of a sparse spell's arrival (``Plan.settling``)."""
        return self.plan is not None and self.plan.settling

    def leaves_out(self, slot: int) -> bool:
        """Whether ``slot`` took no new connections at the last plan (not serving, draining, silent)."""
        return slot in self._out

    def update_sticky(self, listeners: Sequence[socket.socket], roles: Sequence[Role]) -> None:
        """ip-hash: rebuild the bucket table and its program when a slot's role changed (see ``ip_hash``)."""
        self._last_plan = time.monotonic()
        if self.mode != "ip-hash" or not listeners or list(roles) == self.roles:
            return
        table = rebalance(self.table, roles)
        if table != self.table or len(roles) != len(self.roles):
            if not self._attach(listeners, build_ip_hash_program(table)):
                return
            self.moved_buckets += moved(self.table, table)
            logger.info("steering: ip-hash buckets per slot %s", shares(table, len(roles)))
            self.table = table
        self.roles = list(roles)

    def _attach(self, listeners: Sequence[socket.socket], program: list[Instruction]) -> bool:
        started = time.perf_counter()
        try:
            # Any listening member of the group can replace the group's program, atomically.
            attach_program(listeners[0], program)
        except SteeringUnavailableError as exc:
            self.fall_back(listeners, str(exc))
            return False
        self.attach_seconds += time.perf_counter() - started
        self.attaches += 1
        return True

    def next_check(self) -> float:
        """Seconds until connection arrivals should be checked again: soon while they pile up."""
        if self.plan is not None and self.plan.fast:
            return FAST_INTERVAL_S
        return EXACT_INTERVAL_S if self.placing_exactly() else SLOW_CHECK_S

    def _log_stalls(self, stalled: list[int]) -> None:
        before = set(self.plan.stalled) if self.plan else set()
        if set(stalled) - before:
            logger.warning("steering: slots %s get no new connections: their event loops are silent", stalled)
        if before - set(stalled):
            logger.info("steering: slots %s are no longer left out for silence", sorted(before - set(stalled)))

    def fall_back(self, listeners: Sequence[socket.socket], reason: str) -> None:
        logger.warning("connection steering is off, using the kernel's hash: %s", reason)
        self.mode, self.reason, self.weights, self.shared_weight = "hash", reason, [], 0
        if listeners:
            try:
                detach_program(listeners[0])
            except SteeringUnavailableError:
                pass

    def describe(self) -> dict[str, Any]:
        plan = self.plan
        weights = list(self.weights)
        total = sum(weights) + self.shared_weight
        sticky: dict[str, Any] = {}
        if self.mode == "ip-hash":
            # The weights are the buckets (of ip_hash.BUCKETS) each slot's client addresses hash to: its share of
            # new clients. How many buckets moved since start says how often clients were remapped.
            weights = shares(self.table, len(self.roles))
            sticky = {"buckets": weights, "moved_buckets": self.moved_buckets}
        return {
            **sticky,
            "mode": self.mode,
            "requested": self.requested,
            "reason": self.reason,
            "weights": weights,
            # Of new connections, the share sent to the queue every worker accepts from (a stream of short ones).
            "shared_queue": None if not self.shared_queue else round(self.shared_weight / (total or 1), 3),
            "shared_weight": self.shared_weight,
            "updates": self.attaches,
            "mean_attach_us": round(self.attach_seconds / self.attaches * 1e6, 1) if self.attaches else None,
            # Why the weights are what they are: slots left out because their worker went silent (before the
            # supervisor's own, slower, stall_after makes them ineligible), the connections each slot is
            # expected to take before the next update, and the measured rates.
            "stalled": plan.stalled if plan else [],
            "lookahead": round(plan.lookahead, 1) if plan else None,
            "fast": plan.fast if plan else False,  # connections are piling up: a new program every 2 ms
            "exact": plan.exact if plan else False,  # arrivals are sparse: each goes to a least-loaded slot
            "settling": plan.settling if plan else False,  # ...once the last arrival is EXACT_SETTLE_S old
            "arrivals_per_s": round(plan.arrivals_per_s, 1) if plan else None,
            "churn_per_s": round(plan.churn_per_s, 1) if plan else None,
        }
