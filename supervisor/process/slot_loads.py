"""What steering sees of each slot: which may take new connections, and the load its worker and queue hold now
(least-conn), or which may keep and take client addresses (ip-hash)."""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence

from supervisor.process.fleet import Fleet
from supervisor.process.slots import Slot
from supervisor.process.worker_state import WorkerState
from supervisor.steering.balancing import SlotLoad
from supervisor.steering.ip_hash import Role
from supervisor.steering.tcp_info import queued_in


def slot_loads(fleet: Fleet, listeners: Sequence[socket.socket], stall_after: float) -> list[SlotLoad]:
    """One ``SlotLoad`` per slot, in slot order: its worker's shared and reported counts, its accept queue."""
    loads = []
    out = left_out_for_replacement(fleet)  # once per update, not once per slot
    eligible = [serves(fleet, slot) and slot.index not in out for slot in fleet.slots]
    awake = [ok and not _silent(slot, stall_after) for ok, slot in zip(eligible, fleet.slots, strict=True)]
    # A worker silent for stall_after gets no new connections while another can take them. When every one that
    # may is silent (a reload's first replacement taking all the reconnecting clients, or a saturated machine),
    # they keep them: with no weight at all the kernel's hash would take over and send clients to workers about
    # to be replaced (traced at 5,000 clients: 17 landed on the next slot to drain and were cut twice).
    if any(awake):
        eligible = awake
    elif any(eligible):
        # All silent: keep the ones that went silent last (within half of stall_after of the least silent), so a
        # worker blocked before the others fell behind is still left out.
        ages = [
            slot.worker.report_age() if ok and slot.worker else math.inf
            for ok, slot in zip(eligible, fleet.slots, strict=True)
        ]
        least = min(ages)
        eligible = [age <= least + stall_after / 2 for age in ages]
    for slot in fleet.slots:
        worker = slot.worker
        report = worker.last_report if worker else None
        queued = queued_in(listeners, slot.index)
        counted = worker.counters.read() if worker and worker.counters else None
        loads.append(
            SlotLoad(
                slot=slot.index,
                eligible=eligible[slot.index],
                websocket=report.websocket if report else 0,
                http=report.http if report else 0,
                in_flight=report.in_flight if report else 0,
                accept_queue=queued,
                report_age=worker.report_age() if worker else 0.0,
                accepted_now=counted.accepted if counted else None,
                live_now=counted.live if counted else None,
            )
        )
    return loads


def _silent(slot: Slot, stall_after: float) -> bool:
    """Its event loop has sent nothing for ``stall_after``: connections would wait in its accept queue."""
    return slot.worker is not None and slot.worker.report_age() >= stall_after


def serves(fleet: Fleet, slot: Slot) -> bool:
    """Whether ``slot`` has a ready worker that may take new connections, replacements and silence aside."""
    worker = slot.worker
    return worker is not None and worker.state is WorkerState.READY and not slot.removing and not fleet.stopping


def left_out_for_replacement(fleet: Fleet) -> set[int]:
    """The slots steering leaves out while a reload, restart or recycle replaces workers.

    A slot *pending* replacement is left out: a client sent there would be disconnected again by the same
    operation. So is a slot in *handover*, just swapped in while its old worker has not yet said that it stopped
    accepting (its drain starts with that, within ~0.1 s): both take connections from the same socket, and what the
    old one accepts it closes at once, while clients closed by the slot drained before are still reconnecting
    (traced at 5,000 WebSockets: 22-24 per slot landed on the old worker and were cut twice).

    Only while a slot that is neither serves: before the first replacement of a reload is ready every slot is
    pending, and the old workers go on serving as if nothing ran; right after the first swap its slot is the only
    one, and it serves during its handover (its old worker closes no client before it stops accepting).
    """
    serving = [slot for slot in fleet.slots if serves(fleet, slot)]
    pending = {slot.index for slot in serving if slot.pending}
    handover = {slot.index for slot in serving if slot.index not in pending and _old_worker_accepts(fleet, slot)}
    if len(serving) > len(pending) + len(handover):
        return pending | handover
    return pending if len(serving) > len(pending) else set()


def _old_worker_accepts(fleet: Fleet, slot: Slot) -> bool:
    """A worker drained from ``slot`` may still accept on its socket: it has not reported draining, nor exited."""
    for entry in fleet.draining:
        worker = entry.worker
        if worker.slot == slot.index and not worker.exited.done():
            report = worker.last_report
            if report is None or not report.draining:
                return True
    return False


def sticky_roles(fleet: Fleet, stall_after: float) -> list[Role]:
    """ip-hash: each slot's role for the bucket table (see ``supervisor.steering.ip_hash``).

    A slot keeps its client addresses while its worker is replaced: a reload swaps the new worker in on the same
    socket, and a crashed worker's queued connections wait for the next one. Only a slot being removed, or one in
    a crash loop with no ready worker, gives them away; only a ready, reporting worker's slot is given new ones.
    """
    roles = []
    for slot in fleet.slots:
        worker = slot.worker
        ready = worker is not None and worker.state is WorkerState.READY
        if slot.removing or (slot.crash_loop and not ready):
            roles.append(Role.OUT)
        elif ready and worker is not None and worker.report_age() < stall_after and not fleet.stopping:
            roles.append(Role.TAKES)
        else:
            roles.append(Role.HOLDS)
    return roles
