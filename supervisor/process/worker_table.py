"""The worker table: the slots and the workers in them, and what can be done to one worker (runs in the supervisor).

``WorkerTable`` holds the slots (each with its serving worker and, during a replacement, a candidate), the draining
workers, the target size and the generation counter, and the steps that act on one worker: spawn it into a slot, tell
it to drain, kill it, reap its exit, escalate a drain past its deadline, kill a silent or never-ready one. What
should run, and in which order, is decided by the reconcile pass (``supervisor.process.reconcile``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from supervisor.process.batches import ReplaceBatch, Waiter
from supervisor.process.slots import Draining, Slot, WorkerHandle, start_error
from supervisor.process.worker_state import WorkerState

logger = logging.getLogger("wsup.supervisor")

Launcher = Callable[[int, int], WorkerHandle]  # (slot index, generation) -> a started worker


class SlotSockets(Protocol):
    """The listening sockets, one per slot (``ListenerGroup``)."""

    def grow(self, count: int) -> None: ...

    def shrink(self, count: int) -> None: ...

    def queued(self, slot: int) -> int:
        """Connections waiting in ``slot``'s accept queue."""
        ...


class FleetTiming(NamedTuple):
    ready_timeout: float
    heartbeat_timeout: float
    graceful_timeout: float


class Phase(enum.Enum):
    STARTING = "starting"  # the first generation: a worker that fails is not retried, the start fails
    RUNNING = "running"
    STOPPING = "stopping"


class WorkerTable:
    def __init__(
        self,
        launcher: Launcher,
        sockets: SlotSockets,
        timing: FleetTiming,
        *,
        on_change: Callable[[], None] = lambda: None,
        before_close: Callable[[], None] = lambda: None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._launch, self._sockets, self.timing = launcher, sockets, timing
        self._on_change = on_change  # which slots take connections may have changed: re-plan steering now
        self._before_close = before_close  # a listener is about to close: stop watching it
        self._clock = clock or time.monotonic
        self.slots: list[Slot] = []
        self.draining: list[Draining] = []
        self.target = 0
        self.generation = 0
        self.phase = Phase.STARTING
        self._rolls: list[list[Slot]] = []  # the slots each running operation marked pending (``Fleet.rolling``)
        self._batches: list[ReplaceBatch] = []
        self._by_pid: dict[int, WorkerHandle] = {}
        self._killed: set[int] = set()
        self._kill_reasons: dict[int, str] = {}  # pid -> why the fleet killed it (a worker's own exit: "crash")
        # The fleet's (supervisor.process.fleet): requests waiting for a pass to settle them, and what wakes its loop.
        self._waiters: list[Waiter] = []
        self._wake = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self.phase is Phase.STOPPING

    @property
    def replacing(self) -> bool:
        """A reload, restart or recycle runs: the clients of the workers it drains will come back. Which slots it
        has still to replace is each slot's ``pending``."""
        return bool(self._rolls)

    def _spawn(self, slot: Slot) -> WorkerHandle:
        self.generation += 1
        worker = self._launch(slot.index, self.generation)
        if slot.spawned:
            slot.restarts += 1
        slot.spawned += 1
        self._by_pid[worker.pid] = worker
        logger.info("slot %d: started worker %d (generation %d)", slot.index, worker.pid, self.generation)
        return worker

    def _drain(self, worker: WorkerHandle, sig: int, reason: str, on_exit: Any = None) -> Draining:
        now = self._clock()
        entry = Draining(worker, reason, now + self.timing.graceful_timeout, worker.last_counts(), now, on_exit)
        if not worker.exited.done():
            worker.drain(sig)
        self.draining.append(entry)
        return entry

    def _kill(self, worker: WorkerHandle, error: str | None = None) -> None:
        if worker.pid in self._killed:
            return
        self._killed.add(worker.pid)
        if error:
            worker.error = worker.error or error
        worker.kill_tree()

    def _reap(self, now: float) -> bool:
        changed = False
        for slot in self.slots:
            worker = slot.worker
            if worker is None or not worker.exited.done():
                continue
            slot.worker = None
            reason = self._kill_reasons.get(worker.pid, "crash")
            self._forget(worker)
            changed = True
            error = worker.error or start_error(worker) or f"worker exited with code {worker.exited.result()}"
            if self.phase is not Phase.RUNNING or slot.removing:
                slot.last_error = error
                continue
            ready_for = now - worker.ready_at if worker.ready_at is not None else None
            slot.replaced(reason)
            delay = slot.record_exit(now, ready_for, error)
            (logger.error if slot.crash_loop else logger.warning)(
                "slot %d: worker %d exited (%s); restarting in %.2fs%s",
                slot.index, worker.pid, error, delay, " (crash loop)" if slot.crash_loop else "",
            )  # fmt: skip
        for entry in list(self.draining):
            if entry.worker.exited.done():
                self.draining.remove(entry)
                self._forget(entry.worker)
                if entry.on_exit is not None:
                    entry.on_exit(entry, now)
                changed = True
        return changed

    def _forget(self, worker: WorkerHandle) -> None:
        self._by_pid.pop(worker.pid, None)
        self._killed.discard(worker.pid)
        self._kill_reasons.pop(worker.pid, None)

    def _escalate(self, now: float) -> None:
        for entry in self.draining:
            if not entry.killed and now >= entry.deadline:
                logger.warning(
                    "worker %d (slot %d) did not exit in %.1fs: killing it",
                    entry.worker.pid, entry.worker.slot, self.timing.graceful_timeout,
                )  # fmt: skip
                entry.killed = True
                self._kill(entry.worker)

    def _check_health(self, now: float) -> None:
        for slot in self.slots:
            for worker in (slot.worker, slot.candidate):
                if worker is None or worker.exited.done():
                    continue
                if worker.state is WorkerState.STARTING and now - worker.started_at > self.timing.ready_timeout:
                    self._kill(worker, f"not ready within {self.timing.ready_timeout:g}s")
                    self._kill_reasons[worker.pid] = "start-timeout"
                elif worker.state is WorkerState.READY and worker.report_age() > self.timing.heartbeat_timeout:
                    if worker.pid not in self._killed:
                        logger.error(
                            "slot %d: worker %d sent no heartbeat for %.1fs (event loop blocked?): killing it",
                            slot.index, worker.pid, worker.report_age(),
                        )  # fmt: skip
                    self._kill(worker, f"no heartbeat for {worker.report_age():.1f}s")
                    self._kill_reasons[worker.pid] = "heartbeat"
