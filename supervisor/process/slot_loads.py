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
from supervisor.steering.tcp_info import accept_queue


def slot_loads(fleet: Fleet, listeners: Sequence[socket.socket], stall_after: float) -> list[SlotLoad]:
    """One ``SlotLoad`` per slot, in slot order: its worker's shared and reported counts, its accept queue."""
    loads = []
    pending_out = settled_slot_serves(fleet)  # once per update, not once per slot
    eligible = [takes_new_connections(fleet, slot, pending_out) for slot in fleet.slots]
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
        try:
            queued, _ = accept_queue(listeners[slot.index])
        except (OSError, IndexError):
            queued = 0
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


def takes_new_connections(fleet: Fleet, slot: Slot, pending_out: bool) -> bool:
    """Whether steering may send new connections to ``slot``'s worker (weight > 0), silence aside.

    ``pending_out`` (``settled_slot_serves``): a slot pending replacement is left out, because a client sent there
    would be disconnected again by the same reload. Only while another slot serves: before the first replacement
    of a reload is ready every slot is pending, and the old workers go on serving as if nothing ran.
    """
    worker = slot.worker
    if worker is None or worker.state is not WorkerState.READY or slot.removing or fleet.stopping:
        return False
    return not (slot.pending and pending_out)


def settled_slot_serves(fleet: Fleet) -> bool:
    """Whether a ready worker serves a slot that is not pending replacement (during a reload: one already replaced)."""
    return any(
        not slot.pending and not slot.removing and slot.worker is not None and slot.worker.state is WorkerState.READY
        for slot in fleet.slots
    )


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
