"""The fleet: the worker table and its reconcile pass (``supervisor.process.reconcile``), with the requests that
change what should run.

Requests (start, grow, shrink, replace, restart, stop) only record what should be and wait for it; the table's
reconcile pass, run by one loop whenever something happens (a worker ready or exited, a request, a tick), makes it
so. A stop wins over everything: from then on nothing is spawned, a running operation is ended, and every worker
drains for the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ipc.errors import OperationInterruptedError, StartupError
from supervisor.process.batches import Progress, Removal, ReplaceBatch, Waiter
from supervisor.process.reconcile import Reconciler
from supervisor.process.slots import Slot, WorkerHandle, failed_to_start, start_error
from supervisor.process.worker_state import WorkerState
from supervisor.process.worker_table import (
    FleetTiming,
    Launcher,
    Phase,
    SlotSockets,
)

__all__ = ["Fleet", "FleetTiming", "Launcher", "Phase", "SlotSockets"]
EXIT_CHECK_S = 1.0
TICK_S = 0.1  # backoffs, start and drain deadlines are looked at this often while anything is in motion
# When every slot is served by a ready worker and nothing starts, drains or waits, the pass has only the heartbeat
# timeouts (seconds) to look at: a wake-up of the supervisor costs ~0.3 ms of CPU, 10 a second were 3 ms/s idle.
# Anything that changes that state (a report, an exit, a request) wakes the loop at once.
STEADY_TICK_S = 0.5


class Fleet(Reconciler):
    """The table and its pass, with the requests and the loop that runs the pass. Their state (``_waiters``,
    ``_wake``) is set up with the table's, so the fleet takes the table's constructor as it is."""

    # --- reads ---------------------------------------------------------------------------------------------
    def find(self, pid: int) -> WorkerHandle | None:
        return self._by_pid.get(pid)

    def workers(self) -> Iterator[WorkerHandle]:
        """Every live worker process: serving, starting as a replacement, or draining."""
        return iter(list(self._by_pid.values()))

    def candidates(self) -> list[WorkerHandle]:
        return [slot.candidate for slot in self.slots if slot.candidate is not None]

    # --- the loop -----------------------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        next_exit_check = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), STEADY_TICK_S if self.steady else TICK_S)
            except TimeoutError:
                pass
            self._wake.clear()
            now = self._clock()
            if now >= next_exit_check:
                # Exits are signalled by each worker's pidfd. Were one missed, a stop would wait for that worker
                # forever (a failed start hung like that, twice, cause not found): look once a second as well.
                next_exit_check = now + EXIT_CHECK_S
                for worker in list(self._by_pid.values()):
                    worker.poll_exit()
            self.reconcile()

    @property
    def steady(self) -> bool:
        """Every slot served by a ready worker, and nothing starting, draining, waiting or being replaced."""
        if self.phase is not Phase.RUNNING or self.draining or self._waiters or self._batches or self._rolls:
            return False
        return len(self.slots) == self.target and all(
            slot.worker is not None
            and slot.worker.state is WorkerState.READY
            and slot.candidate is None
            and not (slot.removing or slot.held or slot.pending)
            for slot in self.slots
        )

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

    async def replace(self, groups: list[list[Slot]], reason: str, progress: Progress) -> list[dict[str, Any]]:
        """Replace each group of slots in turn: a replacement for each slot of a group starts; once all are ready,
        they are swapped in and the old workers drain.

        The next group's replacements start as soon as the group before is swapped in, while its old workers drain,
        and are swapped in once that drain has ended and they are ready: the reload takes about one start plus one
        drain per group instead of both, and the replaced workers share new connections with a new one sooner,
        while still only one group drains at a time (the reconnecting clients come in one group's wave at a time).
        This keeps the guarantee: until its swap, a group's slots stay pending and its ready replacements take no
        steered connection.
        """
        self._refuse_if_stopping()
        loop = asyncio.get_running_loop()
        chain: list[ReplaceBatch] = []
        for slots in groups:
            chain.append(ReplaceBatch(slots, reason, progress, loop.create_future(), chain[-1] if chain else None))
            for slot in slots:
                slot.batch = chain[-1]
        self._batches += chain
        self.wake()
        events: list[dict[str, Any]] = []
        try:
            for batch in chain:
                events += await batch.done
            return events
        finally:
            for batch in chain:
                if batch in self._batches and not batch.promoted:
                    # The request went away (cancelled): what it has not swapped in yet does not go on alone.
                    self._abort(batch, OperationInterruptedError(f"the {reason} was interrupted"))
                for slot in batch.slots:
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
        return await self._wait(lambda: self._restarted(floor, failures))  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def rolling(self, slots: Iterable[Slot]) -> Iterator[None]:
        """While a reload, restart or recycle runs: ``slots`` (all it will replace) are pending until each one's
        replacement is swapped in (or, for a restart, its old worker drains). Steering gives a pending slot no new
        connections while a slot that is not pending serves, so a client that reconnects is sent only to a worker
        this operation has already started, never to one it will replace next: one disconnect per client.

        The fleet writes the plan, so it also owns its end: a failed or interrupted operation leaves nothing
        pending, and the old workers that keep serving take connections again. Recycles may overlap
        (``--recycle-concurrency``): a slot stays pending while any running one still has it to replace."""
        marked = list(slots)
        self._rolls.append(marked)
        for slot in marked:
            slot.pending = True
        self._on_change()  # a recycle's slot leaves steering now; a reload's slots once the first swap is done
        try:
            yield
        finally:
            self._rolls = [roll for roll in self._rolls if roll is not marked]
            still = {id(slot) for roll in self._rolls for slot in roll}
            for slot in marked:
                if id(slot) not in still:
                    slot.pending = False
            self._on_change()

    async def stop(self) -> None:
        """Drain everything for the stop and wait until no worker process is left."""
        self.phase = Phase.STOPPING
        await self._wait(lambda: None if self._by_pid else True)

    def _refuse_if_stopping(self) -> None:
        if self.stopping:
            raise OperationInterruptedError("the instance is stopping")

    def _add_slots(self, count: int) -> list[Slot]:
        added = [Slot(index) for index in range(len(self.slots), count)]
        self.slots.extend(added)
        self.target = count
        return added

    def _spawn(self, slot: Slot) -> WorkerHandle:
        worker = super()._spawn(slot)
        for future in (worker.ready, worker.exited):
            future.add_done_callback(lambda _: self.wake())
        return worker

    def _after_pass(self) -> None:
        for waiter in list(self._waiters):
            if waiter.settle():
                self._waiters.remove(waiter)

    # --- completion checks of the requests above ----------------------------------------------------------
    def _started(self) -> bool | None:
        for slot in self.slots[: self.target]:
            worker = slot.worker
            if worker is None or failed_to_start(worker):
                error = (worker and (start_error(worker) or worker.error)) or slot.last_error or "it exited"
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
