"""The reconcile pass: compares what runs with what should run and closes the gap (gunicorn's ``manage_workers``).

It reaps exits, escalates drains past their deadline, kills silent or never-ready workers (the table's steps,
``supervisor.process.worker_table``), advances replacement batches and scale-downs, and starts workers for empty
slots. It is the only code that decides to spawn a worker, tell one to drain, or kill one.
``supervisor.process.fleet.Fleet`` adds the requests that record what should be and the loop that runs the pass.
"""

from __future__ import annotations

from ipc.errors import OperationInterruptedError
from ipc.signals import DRAIN_FOR_REPLACEMENT, DRAIN_FOR_STOP
from supervisor.process.batches import Removal, ReplaceBatch
from supervisor.process.slots import failed_to_start
from supervisor.process.worker_state import WorkerState
from supervisor.process.worker_table import Phase, WorkerTable

# How long a scale-down lets a removed slot's worker take what its accept queue holds before draining it. Bounded:
# under the kernel's hash, or with a worker that stopped accepting, the queue may never empty.
REMOVAL_QUEUE_WAIT_S = 1.0


class Reconciler(WorkerTable):
    def _after_pass(self) -> None:
        """Called at the end of every pass, before steering hears of changes (the fleet settles its requests)."""

    def reconcile(self) -> None:
        now = self._clock()
        changed = self._reap(now)
        self._escalate(now)
        if self.phase is Phase.STOPPING:
            changed |= self._drain_everything(now)
        else:
            self._check_health(now)
            changed |= self._drain_held()
            changed |= self._advance_batches(now)
            changed |= self._remove_slots(now)
            self._fill(now)
        self._after_pass()
        if changed:
            self._on_change()

    def _drain_held(self) -> bool:
        """A restart holds every slot: its worker drains now, and the slot gets a new one once it has exited."""
        changed = False
        for slot in self.slots:
            if slot.held and slot.worker is not None:
                self._drain(slot.worker, DRAIN_FOR_REPLACEMENT, "restart")
                slot.worker, slot.pending = None, False  # its next worker is the replacement
                changed = True
        return changed

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
        for batch in list(self._batches):  # in request order: a chain's batch is always after the one it follows
            if batch.promoted:
                if not batch.waiting:
                    self._batches.remove(batch)
                    batch.finish()
                continue
            if batch not in self._batches or not batch.may_start():
                continue  # aborted with the batch it followed; or its turn has not come
            failed = next((slot for slot in batch.slots if failed_to_start(slot.candidate)), None)
            if failed is not None:
                self._abort(batch, batch.failure(failed))
                changed = True
                continue
            for slot in batch.slots:
                if slot.candidate is None:
                    slot.candidate = self._spawn(slot)
                    batch.progress({"event": "starting", "slot": slot.index, "new_pid": slot.candidate.pid})
            ready = all(
                slot.candidate is not None and slot.candidate.state is WorkerState.READY for slot in batch.slots
            )
            if ready and batch.may_swap():
                self._promote(batch, now)
                changed = True
        return changed

    def _promote(self, batch: ReplaceBatch, now: float) -> None:
        """Swap, re-plan steering, then drain: the program that leaves the replaced slots' old workers out (and
        sends nothing to slots still pending) is in force before any old worker closes a connection. Re-planned
        only at the end of the pass, a client closed at once would reconnect under the old program, which still
        weighs the slots this reload replaces next (traced at 5,000 clients: 8-20 per reload, more with a spawn
        later in the same pass)."""
        batch.promoted = True
        swapped = []
        for slot in batch.slots:
            old, new = slot.worker, slot.candidate
            assert new is not None
            slot.worker, slot.candidate, slot.pending = new, None, False
            slot.replaced(batch.reason)
            swapped.append((slot.index, old, new))
        self._on_change()
        for index, old, new in swapped:
            if old is None:
                batch.replaced(index, None, new.pid, {}, 0.0)
                continue
            batch.waiting += 1
            self._drain(old, DRAIN_FOR_REPLACEMENT, batch.reason, batch.on_old_exit(index, new.pid))

    def _abort(self, batch: ReplaceBatch, error: Exception) -> None:
        """End a batch that will not complete: a replacement that failed is killed, one that started is drained.
        The batches chained after it end with it: a reload stops at its first failure."""
        self._batches.remove(batch)
        for later in [other for other in self._batches if other.after is batch]:
            self._abort(later, error)
        sig = DRAIN_FOR_STOP if self.stopping else DRAIN_FOR_REPLACEMENT
        for slot in batch.slots:
            candidate, slot.candidate, slot.pending = slot.candidate, None, False  # its old worker goes on serving
            if candidate is None:
                continue
            if failed_to_start(candidate):
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
                # A connection placed on the slot just before steering left it out may still be queued: the worker
                # takes it before draining, or closing the socket resets it (seen once under `Connection: close`).
                if removal.queue_wait_from is None:
                    removal.queue_wait_from = now
                if self._sockets.queued(slot.index) and now - removal.queue_wait_from < REMOVAL_QUEUE_WAIT_S:
                    continue
                entry = self._drain(slot.worker, DRAIN_FOR_REPLACEMENT, "scale")
                removal.drained[slot.index] = entry
                slot.worker = None
        # Highest slots first: closing the last socket of a reuseport group moves no other socket's index, and a
        # socket is closed only once no worker holds a copy of it.
        while self.slots and self.slots[-1].removing:
            slot = self.slots[-1]
            if slot.worker is not None or any(entry.worker.slot == slot.index for entry in self.draining):
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
            if batch in self._batches:  # not already ended with the batch it followed
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
