"""Connection-aware steering: turn live per-slot loads into weights and keep the group's BPF program current.

The program is re-attached only when the weights change, at most once per ``min_interval``. If the kernel refuses
the program (not Linux, an old kernel, a locked filter), wsup falls back to the kernel's hash, logs why, and
``wsup status`` shows the mode and the reason.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from supervisor.balancing import SlotLoad, compute_weights
from supervisor.bpf import SteeringUnavailableError, attach_program, build_weighted_program, detach_program

logger = logging.getLogger("wsup.steering")


class Steering:
    def __init__(self, requested: str, *, min_interval: float = 0.1) -> None:
        self.requested = requested
        self.mode = requested if sys.platform.startswith("linux") else "hash"
        self.reason: str | None = None if self.mode == requested else "not Linux: the kernel's hash is used"
        self.min_interval = min_interval
        self.weights: list[int] = []
        self.loads: list[SlotLoad] = []
        self.attaches = 0
        self.attach_seconds = 0.0
        self._last_attach = 0.0

    def update(self, listeners: Sequence[socket.socket], loads: Sequence[SlotLoad], *, force: bool = False) -> None:
        """Recompute the weights from ``loads`` (slot order) and re-attach the program if they changed."""
        if self.mode != "least-conn" or not listeners:
            return
        now = time.monotonic()
        if not force and now - self._last_attach < self.min_interval:
            return
        weights = compute_weights(loads)
        self.loads = list(loads)
        if weights == self.weights and not force:
            return
        started = time.perf_counter()
        try:
            # Any listening member of the group can replace the group's program, atomically.
            attach_program(listeners[0], build_weighted_program(weights))
        except SteeringUnavailableError as exc:
            self.fall_back(listeners, str(exc))
            return
        self.attach_seconds += time.perf_counter() - started
        self.attaches += 1
        self.weights = weights
        self._last_attach = now

    def fall_back(self, listeners: Sequence[socket.socket], reason: str) -> None:
        logger.warning("connection steering is off, using the kernel's hash: %s", reason)
        self.mode, self.reason, self.weights = "hash", reason, []
        if listeners:
            try:
                detach_program(listeners[0])
            except SteeringUnavailableError:
                pass

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "requested": self.requested,
            "reason": self.reason,
            "weights": list(self.weights),
            "updates": self.attaches,
            "mean_attach_us": round(self.attach_seconds / self.attaches * 1e6, 1) if self.attaches else None,
        }
