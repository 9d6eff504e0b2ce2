"""What steering sees of each slot: which may take new connections, and the load its worker and queue hold now."""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor.balancing import SlotLoad
from supervisor.slots import Slot
from supervisor.tcp_info import accept_queue
from supervisor.worker_process import WorkerState

if TYPE_CHECKING:
    from supervisor.supervisor import Supervisor


def slot_loads(sup: Supervisor) -> list[SlotLoad]:
    """One ``SlotLoad`` per slot, in slot order: its worker's shared and reported counts, its accept queue."""
    assert sup.listeners is not None
    loads = []
    replaced = replaced_ready(sup)  # once per update, not once per slot
    for slot in sup.slots:
        worker = slot.worker
        report = worker.last_report if worker else None
        try:
            queued, _ = accept_queue(sup.listeners.sockets[slot.index])
        except OSError:
            queued = 0
        counted = worker.counters.read() if worker and worker.counters else None
        loads.append(
            SlotLoad(
                slot=slot.index,
                eligible=takes_new_connections(sup, slot, replaced),
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


def takes_new_connections(sup: Supervisor, slot: Slot, replaced: bool) -> bool:
    """Whether steering may send new connections to ``slot``'s worker (weight > 0)."""
    worker = slot.worker
    if worker is None or worker.state is not WorkerState.READY or slot.retiring:
        return False
    if worker.report_age() >= sup.config.stall_after:
        return False  # its event loop is silent: connections would wait in its accept queue
    floor = sup.reload_floor
    # During a reload, only workers already replaced take new connections (once one is ready), so a client
    # that reconnects is never sent to a worker that will be restarted next: one disconnect per reload.
    return floor is None or worker.generation >= floor or not replaced


def replaced_ready(sup: Supervisor) -> bool:
    """During a reload: whether some already-replaced worker is ready to take the reconnecting clients."""
    floor = sup.reload_floor
    return floor is not None and any(
        s.worker is not None and s.worker.generation >= floor and s.worker.state is WorkerState.READY for s in sup.slots
    )
