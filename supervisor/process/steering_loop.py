"""The supervisor's steering loop: when steering plans (a worker report, a connection arriving, the fleet
changing) and from what (each slot's load, ``slot_loads``). The policy and the program are ``supervisor.steering``'s;
this module only decides their moments, in the supervisor process."""

from __future__ import annotations

import asyncio
import time

from ipc.messages import Report
from supervisor.process.fleet import Fleet
from supervisor.process.listeners import ListenerGroup
from supervisor.process.slot_loads import slot_loads, sticky_roles
from supervisor.process.slots import WorkerHandle
from supervisor.steering.arrivals import ArrivalWatch
from supervisor.steering.controller import EXACT_RECHECK_S, Steering
from supervisor.steering.load_tracker import EXACT_SETTLE_S


class SteeringLoop:
    def __init__(self, steering: Steering, fleet: Fleet, listeners: ListenerGroup, stall_after: float) -> None:
        self.steering = steering
        self.fleet = fleet
        self.listeners = listeners
        self.stall_after = stall_after
        self.arrivals = ArrivalWatch(lambda: self.plan_and_watch())
        self._recheck: asyncio.TimerHandle | None = None
        self._settle: asyncio.TimerHandle | None = None

    def on_report(self, worker: WorkerHandle, report: Report) -> None:
        """Record ``report`` on ``worker``, and plan if it matters now.

        Most reports only refresh counts, which steering re-reads at its own pace (``Steering.due``). Planned from at
        once: one from a slot left out (silent, say: it may take connections again), one that starts a drain, and
        any while arrivals are placed one by one, since the plan made at an arrival can miss the connection its
        worker is accepting at that instant (seen after idle spells: 2 of 4 on one).
        """
        previous = worker.last_report
        urgent = (
            previous is None
            or previous.draining != report.draining
            or self.steering.leaves_out(worker.slot)
            or self.steering.placing_exactly()
        )
        worker.on_report(report)
        if urgent:
            # Not held back by the interval: in exact mode this report may be the only sign of an arrival (the
            # arrival watch misses a connection its worker accepted before the supervisor's epoll looked).
            self.steer(min_interval=0.0)
        elif self.steering.due(time.monotonic()):
            self.steer()

    def steer(self, *, force: bool = False, min_interval: float | None = None) -> None:
        fleet = self.fleet
        if fleet.slots and self.steering.mode == "ip-hash" and not fleet.stopping:
            self.steering.update_sticky(self.listeners.sockets, sticky_roles(fleet, self.stall_after))
            return
        if not fleet.slots or self.steering.mode != "least-conn" or fleet.stopping:
            return
        returning = None
        if fleet.replacing:
            # Clients of the draining workers will reconnect: fill each replaced worker towards its final share.
            # Their shared counts, like the slots' own: a report lags, and a client that has already come back
            # would count twice, lifting the share of every slot (traced: the last slot ended ~4 short of 100).
            returning = float(sum(entry.worker.live_connections() for entry in fleet.draining))
        loads = slot_loads(fleet, self.listeners.sockets, self.stall_after)
        self.steering.update(self.listeners.sockets, loads, force=force, returning=returning, min_interval=min_interval)
        if self.steering.settling() and self._settle is None:
            # The mild program of a sparse spell's arrival: the exact one once no other has come for EXACT_SETTLE_S.
            self._settle = asyncio.get_running_loop().call_later(EXACT_SETTLE_S, self._settled)

    def plan_and_watch(self, *, force: bool = False) -> None:
        """Plan now, and watch for the next arrival from ``next_check`` on (see supervisor.steering.arrivals)."""
        if self.fleet.stopping:
            self.arrivals.disarm()
            return
        self.steer(force=force, min_interval=0.0)
        if self.steering.mode == "least-conn":
            listeners = self.listeners
            self.arrivals.arm_later(self.steering.next_check(), lambda: listeners.sockets)
        if self.steering.placing_exactly() and self._recheck is None:
            # A plan made at an arrival can miss the connection a worker is accepting at that very instant
            # (accepted, not yet counted). Plan once more when that is surely over; arrivals are rare in this mode.
            self._recheck = asyncio.get_running_loop().call_later(EXACT_RECHECK_S, self._plan_again)

    def _plan_again(self) -> None:
        self._recheck = None
        if not self.fleet.stopping:
            self.steer(min_interval=0.0)

    def _settled(self) -> None:
        self._settle = None
        if not self.fleet.stopping:
            self.steer(min_interval=0.0)

    def close(self) -> None:
        """Before the listeners close: no watch on their fds, no plan pending."""
        self.arrivals.disarm()
        for timer in (self._recheck, self._settle):
            if timer is not None:
                timer.cancel()
        self._recheck = self._settle = None
