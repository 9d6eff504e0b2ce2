"""supervisor/process/slot_loads.py: which slots steering may send new connections to, from the fleet's table."""

from __future__ import annotations

import asyncio

import pytest

from ipc.errors import ReloadFailedError
from ipc.messages import Report
from supervisor.process.operations import Operations
from supervisor.process.slot_loads import slot_loads
from supervisor.steering.load_tracker import LoadTracker
from tests.test_fleet import FakeWorker, Harness, run


def test_during_a_reload_only_replaced_workers_take_clients_even_when_they_are_all_silent() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(3)
        reload, first = await h.reload_first_ready()  # slot replaced first: its new worker serves, the old one drains
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


def _stopped_accepting(worker: FakeWorker) -> None:
    """The draining worker's report that says it closed its copy of the listening socket."""
    worker.on_report(Report(worker.pid, worker.slot, worker.generation, 1, 0, 0, 0, 0, 0, 0.0, True, 0))


def _eligible(h: Harness) -> list[bool]:
    return [load.eligible for load in slot_loads(h.fleet, [], stall_after=1.0)]


def test_slots_a_reload_will_replace_take_nothing_once_a_replaced_one_serves() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(4)
        operations = Operations(h.fleet, default_batch=1)
        reload = asyncio.ensure_future(operations.reload(lambda event: None))
        await h.settle()
        assert [slot.pending for slot in h.fleet.slots] == [True] * 4
        assert _eligible(h) == [True] * 4  # nothing replaced yet: the old workers serve as if nothing ran
        (first,) = h.starting()
        changes = h.changes
        first.on_ready()
        await h.settle()
        assert h.changes > changes  # the swap re-plans steering at once
        assert _eligible(h) == [slot == first.slot for slot in range(4)]
        (second,) = h.starting()  # started while the first slot's old worker drains
        second.on_ready()
        await h.settle()
        assert _eligible(h) == [slot == first.slot for slot in range(4)]  # ready, but not swapped in yet
        (draining,) = (entry.worker for entry in h.fleet.draining)
        draining.exit()  # type: ignore[attr-defined]
        await h.settle()
        # Swapped in, but its old worker may still accept on the same socket until it says it stopped: the
        # clients of the first slot still reconnecting go to the first slot's new worker meanwhile.
        assert _eligible(h) == [slot == first.slot for slot in range(4)]
        (old,) = (entry.worker for entry in h.fleet.draining)
        _stopped_accepting(old)  # type: ignore[arg-type]
        assert _eligible(h) == [slot in (first.slot, second.slot) for slot in range(4)]
        reload.cancel()

    run(scenario)


def test_a_pending_slot_whose_worker_crashed_and_came_back_stays_out_until_the_reload_replaces_it() -> None:
    # A worker restarted after a crash is newer than the reload, but the reload still replaces its slot later:
    # clients sent to it would be cut twice.
    async def scenario(h: Harness) -> None:
        await h.started(3)
        reload, first = await h.reload_first_ready()
        crashed = next(slot for slot in h.fleet.slots if slot.pending and slot.candidate is None)  # replaced last
        crashed.worker.exit(1)  # type: ignore[union-attr]
        await h.settle()
        h.now += 1.0  # past the restart backoff
        await h.settle()
        respawned = crashed.worker
        assert respawned is not None and respawned.generation > first.generation
        respawned.on_ready()
        await h.settle()
        assert crashed.pending
        assert _eligible(h) == [slot == first.slot for slot in range(3)]
        reload.cancel()

    run(scenario)


def test_a_failed_reload_leaves_nothing_pending_and_the_old_workers_take_clients_again() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(3)
        reload, first = await h.reload_first_ready()
        h.old_workers_exit()
        await h.settle()
        (second,) = h.starting()
        second.on_failed("ImportError: boom")
        changes = h.changes
        await h.settle()
        with pytest.raises(ReloadFailedError):
            await asyncio.wait_for(reload, 1.0)
        assert h.changes > changes and not any(slot.pending for slot in h.fleet.slots)
        assert _eligible(h) == [True] * 3

    run(scenario)


def test_a_recycled_slot_takes_nothing_while_another_serves_but_a_lone_worker_keeps_serving() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(3)
        operations = Operations(h.fleet, default_batch=1)
        slot = h.fleet.slots[1]
        recycle = asyncio.ensure_future(operations.recycle(slot, slot.worker.pid, "max-requests"))  # type: ignore[union-attr]
        await h.settle()
        assert _eligible(h) == [True, False, True]  # out while its replacement starts, not only after the swap
        (candidate,) = h.starting()
        candidate.on_ready()
        await h.settle()
        assert _eligible(h) == [True, False, True] and slot.worker is candidate  # until the old one stops accepting
        (old,) = (entry.worker for entry in h.fleet.draining)
        _stopped_accepting(old)  # type: ignore[arg-type]
        assert _eligible(h) == [True, True, True]
        h.old_workers_exit()
        await h.settle()
        await asyncio.wait_for(recycle, 1.0)

    run(scenario)

    async def alone(h: Harness) -> None:
        await h.started(1)
        slot = h.fleet.slots[0]
        recycle = asyncio.ensure_future(
            Operations(h.fleet, default_batch=1).recycle(slot, slot.worker.pid, "max-requests")  # type: ignore[union-attr]
        )
        await h.settle()
        assert slot.pending and _eligible(h) == [True]  # nobody else could take its clients
        recycle.cancel()

    run(alone)
