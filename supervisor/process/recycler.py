"""The recycler (a supervised task of the supervisor process): once a second it samples the serving workers
(requests from their reports, age, RSS through psutil) and asks ``Operations.recycle`` to replace the workers due
(``recycle_policy.plan``), through the same path as a reload's slot: replacement ready first, then the old worker
drains. With ``--max-memory`` it keeps each worker's RSS growth and times each recycle, so that a growing worker is
replaced before its forecast RSS passes the limit while it waits its turn.

It never writes the worker table (only the fleet does), never recycles while a reload, scale or restart runs, and
never more slots at once than ``--recycle-concurrency`` (1 unless asked; at most workers - 1). A worker already over
``--max-memory`` when it starts is held and reported, not recycled (its replacement would be over too); a slot whose
replacement fails to start is retried with a growing delay.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import psutil

from ipc.errors import OperationInterruptedError, ReloadInProgressError, WsupError
from supervisor.process.fleet import Fleet, Phase
from supervisor.process.operations import Operations
from supervisor.process.recycle_policy import (
    Due,
    Growth,
    Limits,
    Pace,
    RecycleDuration,
    Sample,
    WorkerLimits,
    born_over,
    memory_line,
    plan,
    retry_delay,
    seconds_to_limit,
)
from supervisor.process.slots import Slot
from supervisor.process.worker_state import WorkerState

logger = logging.getLogger("wsup.recycle")
SAMPLE_S = 1.0


class ProcessMemory:
    """RSS of a pid, keeping one ``psutil.Process`` per worker (a lookup by pid per sample would be wasted work)."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def __call__(self, pid: int) -> int:
        try:
            proc = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
            return int(proc.memory_info().rss)
        except psutil.Error:
            self._procs.pop(pid, None)
            return 0

    def forget(self, live: set[int]) -> None:
        for pid in set(self._procs) - live:
            del self._procs[pid]


class Recycler:
    def __init__(
        self,
        fleet: Fleet,
        operations: Operations,
        limits: Limits,
        *,
        memory_of: Callable[[int], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        interval: float = SAMPLE_S,
        concurrency: int = 1,
    ) -> None:
        self.fleet, self.operations, self.limits = fleet, operations, limits
        self.concurrency = concurrency
        self._memory = memory_of or ProcessMemory()
        self._clock = clock
        self._rng = rng or random.Random()
        self.interval = interval
        self._worker_limits: dict[int, WorkerLimits] = {}  # pid -> its limits, drawn when first seen
        self._first_memory: dict[int, int] = {}  # pid -> RSS at its first sample once ready
        self._rss: dict[int, int] = {}  # pid -> RSS at the last look
        self._growth: dict[int, Growth] = {}  # pid -> its recent RSS samples
        self.duration = RecycleDuration()
        self._in_flight: set[int] = set()  # slots being recycled now
        self.behind: list[str] = []  # workers forecast past the limit even so, at the last look
        self.held: dict[int, str] = {}  # pid -> why it is not recycled although past a limit
        self._failures: dict[int, int] = {}  # slot -> consecutive recycles whose replacement failed
        self._retry_at: dict[int, float] = {}  # slot -> monotonic time before which it is not tried again
        self.last_error: str | None = None
        self.recycled = 0

    @property
    def allowed(self) -> int:
        """Slots recycled at once: ``--recycle-concurrency``, but never every worker of the instance."""
        return max(1, min(self.concurrency, self.fleet.target - 1))

    async def run(self) -> None:
        """Look every ``interval``. Recycles run as tasks of their own, so that the looks go on meanwhile: a new
        worker's first memory sample is taken within one interval of its readiness, also while a recycle (or a
        reload) drains, which is what tells a worker that is over the limit from the start from a leak; and every
        worker's growth is sampled whatever runs."""
        recycling: set[asyncio.Task[None]] = set()
        try:
            while True:
                await asyncio.sleep(self.interval)
                for finished in [task for task in recycling if task.done()]:
                    recycling.discard(finished)
                    finished.result()  # a bug in a recycle fails this supervised task: logged, counted, restarted
                free = self.allowed - len(recycling)
                if free <= 0:
                    self.observe(self._clock())
                    continue
                line = self.due(self._clock())
                for due in line[:free]:
                    recycling.add(asyncio.create_task(self._recycle_in_line(due, line)))
        finally:
            for task in recycling:
                task.cancel()

    async def _recycle_in_line(self, due: Due, line: list[Due]) -> None:
        while await self._recycle(due, line):  # workers waiting in line: the next goes at once
            line = self.due(self._clock())
            if not line:
                return
            due = line[0]

    async def step(self) -> Due | None:
        """Look once; recycle the first worker due, if any. Returns what was recycled."""
        line = self.due(self._clock())
        if not line or not await self._recycle(line[0], line):
            return None
        return line[0]

    async def _recycle(self, due: Due, line: list[Due]) -> bool:
        """Recycle ``due``; ``line``: every worker due when it was chosen (the others are recycled next)."""
        slot = self.fleet.slots[due.slot]
        logger.info("slot %d: recycling worker %d (%s: %s)", due.slot, due.pid, due.reason, due.note)
        self._in_flight.add(due.slot)
        # Workers also due are recycled next: their slots take no new connections meanwhile (while another serves),
        # so the clients this recycle closes do not reconnect to a worker about to be closed too.
        waiting = [self.fleet.slots[other.slot] for other in line if other.slot != due.slot]
        started = self._clock()
        try:
            replaced = await self.operations.recycle(slot, due.pid, due.reason, waiting)
        except (ReloadInProgressError, OperationInterruptedError):
            return False  # an operation started meanwhile, or the instance is stopping: look again later
        except WsupError as exc:
            failures = self._failures.get(due.slot, 0) + 1
            self._failures[due.slot] = failures
            delay = retry_delay(failures)
            self._retry_at[due.slot] = self._clock() + delay
            self.last_error = f"slot {due.slot}: {due.reason} recycle failed: {exc}"[:500]
            logger.error("%s; trying again in %.0fs", self.last_error, delay)
            return False
        finally:
            self._in_flight.discard(due.slot)
        if replaced:  # (nothing to do when another worker serves the slot by now: not a recycle's duration)
            self.duration.observe(self._clock() - started)
        self._failures.pop(due.slot, None)
        self.recycled += 1
        return True

    def check(self, now: float) -> Due | None:
        """The worker to recycle now, or None (nothing due, or not the time: an operation runs, a stop...)."""
        return next(iter(self.due(now)), None)

    def due(self, now: float) -> list[Due]:
        """Every worker due now, in order (empty when it is not the time: an operation runs, a stop...)."""
        self.observe(now)
        fleet = self.fleet
        operations = self.operations
        if fleet.phase is not Phase.RUNNING or operations.running not in (None, "recycle") or operations.waiting:
            return []
        candidates = []
        for slot in self.fleet.slots[: self.fleet.target]:
            sample = self._sample(slot, now)
            if sample is not None:
                candidates.append((sample, self._limits_of(sample.pid)))
        pace = Pace(self.duration.budget, self.interval, self.allowed, len(self._in_flight))
        if self.limits.max_memory:
            _, behind = memory_line([c for c in candidates if c[0].pid not in self.held], pace)
            if behind and not self.behind:
                logger.warning(
                    "--max-memory: recycling %d at a time cannot keep up (%s); a higher --recycle-concurrency"
                    " would let more slots recycle at once", self.allowed, "; ".join(behind),
                )  # fmt: skip
            self.behind = behind
        return plan(candidates, self.held, pace)

    def observe(self, now: float) -> None:
        """Sample each serving worker's RSS (whatever runs) into its growth; take each new one's first sample, and
        hold it if it is over the limit already: its replacement would be too, so recycling it would loop."""
        self._forget_gone()
        if not self.limits.max_memory:
            return
        for slot in self.fleet.slots:
            worker = slot.worker
            if worker is None or worker.state is not WorkerState.READY or worker.ready_at is None:
                continue
            memory = self._rss[worker.pid] = self._memory(worker.pid)
            self._growth.setdefault(worker.pid, Growth()).add(now - worker.ready_at, memory)
            if worker.pid in self._first_memory:
                continue
            self._first_memory[worker.pid] = memory
            limits = self._limits_of(worker.pid)
            if memory and born_over(memory, limits):
                self.held[worker.pid] = (
                    f"slot {slot.index}: worker {worker.pid} uses {memory >> 20} MiB right after start, over"
                    f" --max-memory ({(limits.memory or 0) >> 20} MiB): not recycled, since its replacement would be"
                    " too; raise --max-memory"
                )
                logger.error("%s", self.held[worker.pid])

    def _sample(self, slot: Slot, now: float) -> Sample | None:
        worker = slot.worker
        if worker is None or worker.state is not WorkerState.READY or worker.ready_at is None:
            return None
        if slot.candidate is not None or slot.batch is not None or slot.removing or slot.held:
            return None
        if slot.index in self._in_flight or now < self._retry_at.get(slot.index, 0.0):
            return None
        report = worker.last_report
        memory = self._rss.get(worker.pid, 0)
        growth = self._growth[worker.pid].rate() if worker.pid in self._growth else None
        requests = report.requests if report else 0
        first = self._first_memory.get(worker.pid, 0)
        return Sample(slot.index, worker.pid, now - worker.started_at, requests, memory, growth, first)

    def _limits_of(self, pid: int) -> WorkerLimits:
        limits = self._worker_limits.get(pid)
        if limits is None:
            limits = self._worker_limits[pid] = self.limits.for_worker(self._rng)
        return limits

    def _forget_gone(self) -> None:
        live = {worker.pid for worker in self.fleet.workers()}
        tables: tuple[dict[int, Any], ...] = (
            self._worker_limits,
            self._first_memory,
            self.held,
            self._rss,
            self._growth,
        )
        for table in tables:
            for pid in set(table) - live:
                del table[pid]
        if isinstance(self._memory, ProcessMemory):
            self._memory.forget(live)

    def forecast(self) -> dict[str, dict[str, float | None]]:
        """Per serving worker (by pid): its sustained RSS growth (MiB/s) and forecast seconds to --max-memory."""
        shown: dict[str, dict[str, float | None]] = {}
        for slot in self.fleet.slots:
            worker = slot.worker
            if worker is None or worker.pid not in self._rss:
                continue
            growth = self._growth[worker.pid].rate() if worker.pid in self._growth else None
            first = self._first_memory.get(worker.pid, 0)
            sample = Sample(slot.index, worker.pid, 0.0, 0, self._rss[worker.pid], growth, first)
            eta = seconds_to_limit(sample, self._limits_of(worker.pid))
            shown[str(worker.pid)] = {
                "growth_mib_s": round(growth / (1 << 20), 2) if growth else 0.0,
                "seconds_to_limit": round(eta, 1) if eta is not None else None,
            }
        return shown

    def describe(self) -> dict[str, Any]:
        """For ``status --json``: the settings, each serving worker's own limits, and what is held or failed."""
        limits = self.limits
        memory: dict[str, Any] = {}
        if limits.max_memory:
            memory = {
                "recycle_s": round(self.duration.budget, 2),
                "recycle_measured": self.duration.measured,
                "forecast": self.forecast(),
                "behind": self.behind,
            }
        return {
            "max_requests": limits.max_requests,
            "max_requests_jitter": limits.max_requests_jitter,
            "max_lifetime_s": limits.max_lifetime,
            "max_lifetime_jitter_s": limits.max_lifetime_jitter,
            "max_memory_bytes": limits.max_memory,
            "recycled": self.recycled,
            "workers": {str(pid): worker.describe() for pid, worker in self._worker_limits.items()},
            "held": list(self.held.values()),
            "last_error": self.last_error,
            "concurrency": self.allowed,
            **memory,
        }
