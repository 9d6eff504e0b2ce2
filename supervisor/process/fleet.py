"""The fleet: the only writer of slots, workers, draining workers, target size and generations.

Requests (start, grow, shrink, replace, restart, stop) only record what should be and wait for it. One reconcile
pass, run by one loop whenever something happens (a worker ready, exited, a request, a tick), compares what runs
with what should run and closes the gap: it is the only place that spawns a worker, tells one to drain, or kills
one (gunicorn's ``manage_workers``). A stop wins over everything: from then on nothing is spawned, a running
operation is ended, and every worker drains for the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

from ipc.errors import OperationInterruptedError, StartupError
from ipc.signals import DRAIN_FOR_REPLACEMENT, DRAIN_FOR_STOP
from supervisor.process.batches import Progress, Removal, ReplaceBatch, Waiter
from supervisor.process.slots import Draining, Slot, WorkerHandle
from supervisor.process.worker_state import WorkerState

logger = logging.getLogger("wsup.supervisor")
TICK_S = 0.1  # backoffs, heartbeats and drain deadlines are looked at this often even when nothing happens

Launcher = Callable[[int, int], WorkerHandle]  # (slot index, generation) -> a started worker


class SlotSockets(Protocol):
    """The listening sockets, one per slot (``ListenerGroup``)."""

    def grow(self, count: int) -> None: ...

    def shrink(self, count: int) -> None: ...


class FleetTiming(NamedTuple):
    ready_timeout: float
    heartbeat_timeout: float
    graceful_timeout: float


class Phase(enum.Enum):
    STARTING = "starting"  # the first generation: a worker that fails is not retried, the start fails
    RUNNING = "running"
    STOPPING = "stopping"


class Fleet:
    def __init__(
        self,
        launcher: Launcher,
        sockets: SlotSockets,
        timing: FleetTiming,
        *,
        on_change: Callable[[], None] = lambda: None,
        before_close: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._launch, self._sockets, self.timing = launcher, sockets, timing
        self._on_change = on_change  # which slots take connections may have changed: re-plan steering now
        self._before_close = before_close  # a listener is about to close: stop watching it
        self._clock = clock
        self.slots: list[Slot] = []
        self.draining: list[Draining] = []
        self.target = 0
        self.generation = 0
        self.phase = Phase.STARTING
        self.reload_floor: int | None = None  # while replacing: the first generation that counts as replaced
        self._batches: list[ReplaceBatch] = []
        self._waiters: list[Waiter] = []
        self._by_pid: dict[int, WorkerHandle] = {}
        self._killed: set[int] = set()
        self._kill_reasons: dict[int, str] = {}  # pid -> why the fleet killed it (a worker's own exit: "crash")
        self._wake = asyncio.Event()

    # --- reads ---------------------------------------------------------------------------------------------
    def find(self, pid: int) -> WorkerHandle | None:
        return self._by_pid.get(pid)

    def workers(self) -> Iterator[WorkerHandle]:
        """Every live worker process: serving, starting as a replacement, or draining."""
        return iter(list(self._by_pid.values()))

    def candidates(self) -> list[WorkerHandle]:
        return [slot.candidate for slot in self.slots if slot.candidate is not None]

    @property
    def stopping(self) -> bool:
        return self.phase is Phase.STOPPING

    # --- the loop -----------------------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            except TimeoutError:
                pass
            self._wake.clear()
            self.reconcile()

    def _wait(self, check: Callable[[], Any]) -> asyncio.Future[Any]:
        """A future settled by the first reconcile pass after which ``check`` returns a result (or raises)."""
        waiter = Waiter(check, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self.wake()
        return waiter.future

    # --- requests: each records what should be, then waits for reconcile to make it so -------------------
    async def start(self, count: int) -> None:
        self._add_slots(count)
        await self._wait(self._started)

    async def grow(self, count: int, progress: Progress) -> list[dict[str, Any]]:
        self._refuse_if_stopping()
        self._sockets.grow(count)  # appended sockets take the next indices in the group: slot i is index i
        added = self._add_slots(count)
        events: list[dict[str, Any]] = await self._wait(lambda: self._grown(added, progress))
        return events

    async def shrink(self, count: int, progress: Progress) -> list[dict[str, Any]]:
        self._refuse_if_stopping()
        removal = Removal(progress)
        for slot in self.slots[count:]:
            slot.removing = True
            slot.batch = removal
        self.target = count
        self._on_change()  # weight 0 before the drain, so no connection waits in a queue that is about to close
        events: list[dict[str, Any]] = await self._wait(lambda: removal.outcome(self._removing()))
        return events

    async def replace(self, slots: list[Slot], reason: str, progress: Progress) -> list[dict[str, Any]]:
        """Start a replacement for each of ``slots``; once all are ready, swap them in and drain the old workers."""
        self._refuse_if_stopping()
        batch = ReplaceBatch(slots, reason, progress, asyncio.get_running_loop().create_future())
        for slot in slots:
            slot.batch = batch
        self._batches.append(batch)
        self.wake()
        try:
            return await batch.done
        finally:
            for slot in slots:
                if slot.batch is batch:
                    slot.batch = None

    async def restart(self) -> tuple[list[int], list[str]]:
        """Drain every worker now and start new ones as each slot's old worker exits (not zero-downtime)."""
        self._refuse_if_stopping()
        floor = self.generation + 1
        failures = {slot.index: slot.failures for slot in self.slots}
        for slot in self.slots:
            slot.held = True
            slot.replaced("restart")
            if slot.worker is not None:
                self._drain(slot.worker, DRAIN_FOR_REPLACEMENT, "restart")
                slot.worker = None
        self._on_change()
        return await self._wait(lambda: self._restarted(floor, failures))  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def rolling(self) -> Iterator[None]:
        """While a reload or restart runs, only workers it started take new connections, once one is ready: a
        client that reconnects is never sent to a worker that is about to be replaced (one disconnect per client)."""
        self.reload_floor = self.generation + 1
        try:
            yield
        finally:
            self.reload_floor = None
            self._on_change()

    async def stop(self) -> None:
        """Drain everything for the stop and wait until no worker process is left."""
        self.phase = Phase.STOPPING
        await self._wait(lambda: None if self._by_pid else True)

    def _refuse_if_stopping(self) -> None:
        if self.stopping:
            raise OperationInterruptedError("the instance is stopping")

    # --- reconcile: the only place that spawns, drains and kills -------------------------------------------
    def reconcile(self) -> None:
        now = self._clock()
        changed = self._reap(now)
        self._escalate(now)
        if self.phase is Phase.STOPPING:
            changed |= self._drain_everything(now)
        else:
            self._check_health(now)
            changed |= self._advance_batches(now)
            changed |= self._remove_slots(now)
            self._fill(now)
        self._settle_waiters()
        if changed:
            self._on_change()

    def _add_slots(self, count: int) -> list[Slot]:
        added = [Slot(index) for index in range(len(self.slots), count)]
        self.slots.extend(added)
        self.target = count
        return added

    def _spawn(self, slot: Slot) -> WorkerHandle:
        self.generation += 1
        worker = self._launch(slot.index, self.generation)
        if slot.spawned:
            slot.restarts += 1
        slot.spawned += 1
        self._by_pid[worker.pid] = worker
        for future in (worker.ready, worker.exited):
            future.add_done_callback(lambda _: self.wake())
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
            error = worker.error or _start_error(worker) or f"worker exited with code {worker.exited.result()}"
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

    def _fill(self, now: float) -> None:
        for slot in self.slots[: self.target]:
            if slot.worker is not None or slot.candidate is not None or slot.removing:
                continue
            if slot.held:
                if any(entry.worker.slot == slot.index for entry in self.draining):
                    continue
                slot.held = False
            if self.phase is Phase.STARTING and slot.spawned:
                continue  # a first worker that failed is not retried: the start fails
            if now >= slot.next_start_at:
                slot.worker = self._spawn(slot)

    def _advance_batches(self, now: float) -> bool:
        changed = False
        for batch in list(self._batches):
            if batch.promoted:
                if not batch.waiting:
                    self._batches.remove(batch)
                    batch.finish()
                continue
            failed = next((slot for slot in batch.slots if _failed(slot.candidate)), None)
            if failed is not None:
                self._abort(batch, batch.failure(failed))
                continue
            for slot in batch.slots:
                if slot.candidate is None:
                    slot.candidate = self._spawn(slot)
                    batch.progress({"event": "starting", "slot": slot.index, "new_pid": slot.candidate.pid})
            if all(slot.candidate is not None and slot.candidate.state is WorkerState.READY for slot in batch.slots):
                self._promote(batch, now)
                changed = True
        return changed

    def _promote(self, batch: ReplaceBatch, now: float) -> None:
        """Swap first, then drain: steering moves new connections to the replacements before the old ones close."""
        batch.promoted = True
        for slot in batch.slots:
            old, new = slot.worker, slot.candidate
            assert new is not None
            slot.worker, slot.candidate = new, None
            slot.replaced(batch.reason)
            if old is None:
                batch.replaced(slot.index, None, new.pid, {}, 0.0)
                continue
            batch.waiting += 1
            self._drain(old, DRAIN_FOR_REPLACEMENT, batch.reason, batch.on_old_exit(slot.index, new.pid))

    def _abort(self, batch: ReplaceBatch, error: Exception) -> None:
        """End a batch that will not complete: a replacement that failed is killed, one that started is drained."""
        self._batches.remove(batch)
        sig = DRAIN_FOR_STOP if self.stopping else DRAIN_FOR_REPLACEMENT
        for slot in batch.slots:
            candidate, slot.candidate = slot.candidate, None
            if candidate is None:
                continue
            if _failed(candidate):
                self._kill(candidate)
                self._drain(candidate, sig, "failed").killed = True
            else:
                self._drain(candidate, sig, "interrupted" if self.stopping else "failed")
        batch.fail(error)

    def _removing(self) -> bool:
        return any(slot.removing for slot in self.slots)

    def _remove_slots(self, now: float) -> bool:
        changed = False
        for slot in self.slots:
            if slot.removing and slot.worker is not None:
                removal: Removal = slot.batch
                entry = self._drain(slot.worker, DRAIN_FOR_REPLACEMENT, "scale")
                removal.drained[slot.index] = entry
                slot.worker = None
        # Highest slots first: closing the last socket of a reuseport group moves no other socket's index, and a
        # socket is closed only once no worker holds a copy of it.
        while self.slots and self.slots[-1].removing:
            slot = self.slots[-1]
            if any(entry.worker.slot == slot.index for entry in self.draining):
                break
            self.slots.pop()
            self._before_close()  # the arrival watch must not watch an fd number that may be reused at once
            self._sockets.shrink(len(self.slots))
            slot.batch.removed(slot.index)
            changed = True
        return changed

    def _drain_everything(self, now: float) -> bool:
        changed = False
        for batch in list(self._batches):
            self._abort(batch, OperationInterruptedError("the instance is stopping"))
        for slot in self.slots:
            for worker in (slot.candidate, slot.worker):
                if worker is not None:
                    self._drain(worker, DRAIN_FOR_STOP, "stop")
                    changed = True
            slot.worker = slot.candidate = None
            if slot.removing:
                slot.batch.interrupted = True
        return changed

    def _settle_waiters(self) -> None:
        for waiter in list(self._waiters):
            if waiter.settle():
                self._waiters.remove(waiter)

    # --- completion checks of the requests above ----------------------------------------------------------
    def _started(self) -> bool | None:
        for slot in self.slots[: self.target]:
            worker = slot.worker
            if worker is None or _failed(worker):
                error = (worker and (_start_error(worker) or worker.error)) or slot.last_error or "it exited"
                raise StartupError(f"worker {slot.index} failed to start: {error}")
        if all(slot.worker is not None and slot.worker.state is WorkerState.READY for slot in self.slots):
            if self.phase is Phase.STARTING:
                self.phase = Phase.RUNNING
                self._on_change()
            return True
        self._refuse_if_stopping()
        return None

    def _grown(self, added: list[Slot], progress: Progress) -> list[dict[str, Any]] | None:
        outcomes = []
        for slot in added:
            worker = slot.worker
            if worker is not None and worker.state is WorkerState.READY:
                outcomes.append({"event": "added", "slot": slot.index, "pid": worker.pid, "error": None})
            elif slot.failures or slot.last_error:
                outcomes.append({"event": "added", "slot": slot.index, "pid": None, "error": slot.last_error})
            else:
                return None
        for event in outcomes:
            progress(event)
        return outcomes

    def _restarted(self, floor: int, failures: dict[int, int]) -> tuple[list[int], list[str]] | None:
        self._refuse_if_stopping()
        pids, errors = [], []
        for slot in self.slots:
            worker = slot.worker
            if worker is not None and worker.generation >= floor and worker.state is WorkerState.READY:
                pids.append(worker.pid)
            elif slot.failures > failures.get(slot.index, 0):
                errors.append(f"slot {slot.index}: {slot.last_error}")
            else:
                return None
        return pids, errors


def _failed(worker: WorkerHandle | None) -> bool:
    """A worker that exited, or whose start failed (it will exit), before it was ready."""
    if worker is None:
        return False
    if worker.ready.done():
        return worker.ready.cancelled() or worker.ready.exception() is not None
    return worker.exited.done()


def _start_error(worker: WorkerHandle) -> str | None:
    ready = worker.ready
    if ready.done() and not ready.cancelled() and ready.exception() is not None:
        return str(ready.exception())
    return None
