"""supervisor/process/slot_loads.py: which slots steering may send new connections to, from the fleet's table."""

from __future__ import annotations

import asyncio

from supervisor.process.operations import Operations
from supervisor.process.slot_loads import slot_loads
from supervisor.steering.load_tracker import LoadTracker
from tests.test_fleet import Harness, run


def test_during_a_reload_only_replaced_workers_take_clients_even_when_they_are_all_silent() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(3)
        reload = asyncio.ensure_future(Operations(h.fleet, default_batch=1).reload(lambda event: None))
        await h.settle()
        (first,) = h.starting()
        first.on_ready()
        await h.settle()  # slot replaced first: its new worker serves, the old one drains
        loads = slot_loads(h.fleet, [], stall_after=1.0)
        assert [load.eligible for load in loads] == [load.slot == first.slot for load in loads]
        # The reconnect storm keeps the new worker too busy to report: it is silent, but still the only one that
        # may take clients. Leaving it out would leave no weight at all, and the kernel's hash would take over.
        first.age = 5.0
        loads = slot_loads(h.fleet, [], stall_after=1.0)
        assert [load.eligible for load in loads] == [load.slot == first.slot for load in loads]
        plan = LoadTracker().plan(1.0, loads)
        assert plan.weights[first.slot] == sum(plan.weights) > 0
        reload.cancel()

    run(scenario)


def test_a_silent_worker_is_left_out_while_another_can_take_its_clients() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(3)
        h.workers()[1].age = 5.0
        assert [load.eligible for load in slot_loads(h.fleet, [], stall_after=1.0)] == [True, False, True]

    run(scenario)


def test_when_every_worker_is_silent_the_one_silent_longest_stays_out() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(3)
        for worker, age in zip(h.workers(), (1.2, 1.3, 4.0), strict=True):
            worker.age = age  # all behind (a saturated machine); the last one blocked long before the others
        assert [load.eligible for load in slot_loads(h.fleet, [], stall_after=1.0)] == [True, True, False]

    run(scenario)
