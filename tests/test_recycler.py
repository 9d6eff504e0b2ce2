"""The recycler against a real fleet of plain worker objects (tests/test_fleet.py's harness): it replaces one slot
at a time through the fleet (or up to --recycle-concurrency, never every worker), records the reason, recycles a
growing worker early by forecast, stays out of the way of operations, and never loops."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

from ipc.messages import Report
from supervisor.process.operations import Operations
from supervisor.process.recycle_policy import Limits
from supervisor.process.recycler import Recycler
from supervisor.process.slot_loads import slot_loads
from supervisor.process.worker_state import WorkerState
from tests.test_fleet import FakeWorker, Harness

MIB = 1 << 20


def _report(worker: FakeWorker, requests: int) -> None:
    worker.on_report(Report(worker.pid, worker.slot, worker.generation, 1, 0, 0, 0, requests, 0, 0.0, False, 0))


class Rig:
    def __init__(self, limits: Limits, memory: dict[int, int] | None = None, concurrency: int = 1) -> None:
        self.h = Harness(graceful=5.0)
        self.memory = memory if memory is not None else {}
        self.operations = Operations(self.h.fleet, 1)
        self.recycler = Recycler(
            self.h.fleet,
            self.operations,
            limits,
            memory_of=lambda pid: self.memory.get(pid, 0),
            clock=lambda: self.h.now,
            rng=random.Random(3),
            interval=0.01,
            concurrency=concurrency,
        )

    def check_now(self) -> Any:
        return self.recycler.check(self.h.now)

    async def step(self) -> asyncio.Task[Any]:
        """One look of the recycler, run as a task beside reconcile passes (its replace waits on them)."""
        task = asyncio.ensure_future(self.recycler.step())
        await self.h.settle()
        return task

    async def finish_replacements(self, task: asyncio.Task[Any]) -> Any:
        for worker in self.h.starting():
            worker.on_ready()
        await self.h.settle()
        for worker in list(self.h.spawned):
            if worker.state is WorkerState.DRAINING:
                worker.exit(0)
        await self.h.settle()
        return await asyncio.wait_for(task, 1.0)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


def test_the_worker_past_max_requests_is_replaced_ready_first_with_its_reason() -> None:
    async def scenario() -> None:
        rig = Rig(Limits(max_requests=100))
        h = rig.h
        await h.started(3)
        old = h.workers()
        _report(old[0], 50)
        _report(old[1], 130)
        _report(old[2], 120)
        task = await rig.step()
        assert len(h.starting()) == 1 and h.starting()[0].slot == 1  # the furthest past its limit, alone
        assert old[1].signals == []  # not drained before its replacement is ready
        assert rig.operations.running == "recycle"
        due = await rig.finish_replacements(task)
        assert due.reason == "max-requests" and due.slot == 1
        slot = h.fleet.slots[1]
        assert slot.worker is not old[1] and slot.last_reason == "max-requests"
        assert slot.replacements == {"max-requests": 1}
        assert old[1].signals and old[0].signals == [] and old[2].signals == []
        # The next look takes the next one: one slot at a time.
        task = await rig.step()
        assert [w.slot for w in h.starting()] == [2]
        await rig.finish_replacements(task)
        assert rig.recycler.recycled == 2 and rig.operations.running is None

    run(scenario())


def test_nothing_is_recycled_while_an_operation_runs() -> None:
    async def scenario() -> None:
        rig = Rig(Limits(max_lifetime=10.0))
        h = rig.h
        await h.started(2)
        h.now += 60
        rig.operations.running = "reload"
        task = await rig.step()
        assert await asyncio.wait_for(task, 1.0) is None and h.starting() == []
        rig.operations.running = None
        task = await rig.step()
        assert len(h.starting()) == 1
        due = await rig.finish_replacements(task)
        assert due.reason == "max-lifetime"

    run(scenario())


def test_a_user_operation_waits_for_a_running_recycle_instead_of_being_refused() -> None:
    async def scenario() -> None:
        rig = Rig(Limits(max_requests=10))
        h = rig.h
        await h.started(2)
        _report(h.workers()[0], 10)
        recycle = await rig.step()
        scale = asyncio.ensure_future(rig.operations.scale(1, lambda event: None))
        await h.settle()
        assert rig.operations.running == "recycle" and not scale.done()
        await rig.finish_replacements(recycle)
        await h.settle()
        for worker in list(h.spawned):
            if worker.state is WorkerState.DRAINING:
                worker.exit(0)
        await h.settle()
        assert await asyncio.wait_for(scale, 1.0) == {"from": 2, "to": 1}

    run(scenario())


def test_a_worker_over_max_memory_right_after_start_is_held_and_reported_not_recycled() -> None:
    async def scenario() -> None:
        rig = Rig(Limits(max_memory=100 * MIB))
        h = rig.h
        await h.started(2)
        first, second = h.workers()
        rig.memory[first.pid] = 150 * MIB  # over at its first sample: a replacement would be too
        rig.memory[second.pid] = 40 * MIB
        for _ in range(3):
            task = await rig.step()
            assert await asyncio.wait_for(task, 1.0) is None
        assert h.starting() == [] and len(h.spawned) == 2
        described = rig.recycler.describe()
        assert len(described["held"]) == 1 and "right after start" in described["held"][0]
        # The other worker grows past the limit later on: that one is a leak, and is recycled.
        rig.memory[second.pid] = 120 * MIB
        task = await rig.step()
        assert [w.slot for w in h.starting()] == [1]
        due = await rig.finish_replacements(task)
        assert due.reason == "max-memory" and h.fleet.slots[1].last_reason == "max-memory"

    run(scenario())


def test_a_replacement_that_fails_keeps_the_old_worker_and_backs_off() -> None:
    async def scenario() -> None:
        rig = Rig(Limits(max_requests=5))
        h = rig.h
        await h.started(1)
        old = h.workers()[0]
        _report(old, 6)
        task = await rig.step()
        replacement = h.starting()[0]
        replacement.on_failed("ImportError: boom")
        replacement.exit(3)
        await h.settle()
        assert await asyncio.wait_for(task, 1.0) is None
        assert h.fleet.slots[0].worker is old and old.signals == []
        assert "max-requests recycle failed" in (rig.recycler.last_error or "")
        task = await rig.step()  # within the back-off: not tried again
        assert await asyncio.wait_for(task, 1.0) is None and len(h.spawned) == 2
        h.now += 6
        task = await rig.step()
        assert len(h.starting()) == 1
        await rig.finish_replacements(task)

    run(scenario())


def test_a_replacement_is_sampled_at_once_even_while_its_recycle_still_drains() -> None:
    async def scenario() -> None:
        rig = Rig(Limits(max_memory=100 * MIB))
        h = rig.h
        await h.started(2)
        first, second = h.workers()
        rig.memory.update({first.pid: 40 * MIB, second.pid: 40 * MIB})
        rig.recycler.observe(h.now)  # their first samples: under the limit
        rig.memory[first.pid] = 130 * MIB  # a leak
        task = await rig.step()
        replacement = h.starting()[0]
        rig.memory[replacement.pid] = 150 * MIB  # over the limit from its start: recycling it again would loop
        replacement.on_ready()
        await h.settle()
        assert rig.operations.running == "recycle" and first.state is WorkerState.DRAINING
        rig.recycler.observe(h.now)
        assert len(rig.recycler.held) == 1 and str(replacement.pid) in rig.recycler.describe()["held"][0]
        first.exit(0)
        await h.settle()
        assert (await asyncio.wait_for(task, 1.0)).reason == "max-memory"
        assert rig.recycler.check(h.now) is None  # held, not recycled

    run(scenario())


def _grow(rig: Rig, rates: dict[int, float], seconds: int) -> None:
    """Advance the clock a second at a time, each worker's RSS growing at its rate (MiB/s), the recycler looking."""
    for _ in range(seconds):
        rig.h.now += 1.0
        for pid, rate in rates.items():
            rig.memory[pid] = rig.memory.get(pid, 60 * MIB) + int(rate * MIB)
        rig.recycler.observe(rig.h.now)


def test_a_growing_worker_is_recycled_before_its_limit_by_forecast() -> None:
    async def scenario() -> None:
        rig = Rig(Limits(max_memory=150 * MIB))
        h = rig.h
        await h.started(2)
        leaking, flat = h.workers()
        _grow(rig, {leaking.pid: 5.0, flat.pid: 0.0}, 12)  # 120 MiB, growing 5 MiB/s: 6 s from the limit
        assert rig.check_now() is None  # its turn (5 s per recycle by default, + 1 s) would end in time
        _grow(rig, {leaking.pid: 5.0, flat.pid: 0.0}, 1)  # 125 MiB: 5 s from it, within its turn
        forecast = rig.recycler.describe()["forecast"]
        assert (
            forecast[str(leaking.pid)]["growth_mib_s"] == 5.0 and forecast[str(leaking.pid)]["seconds_to_limit"] == 5.0
        )
        assert forecast[str(flat.pid)] == {"growth_mib_s": 0.0, "seconds_to_limit": None}
        task = await rig.step()
        assert [w.slot for w in h.starting()] == [leaking.slot]
        h.now += 3.0
        due = await rig.finish_replacements(task)
        assert due.reason == "max-memory" and due.overshoot < 1 and "forecast" in due.note
        assert (rig.recycler.duration.measured, rig.recycler.duration.seconds) == (1, 3.0)
        assert rig.recycler.describe()["recycle_s"] == 4.5  # planned with its deviation

    run(scenario())


def test_up_to_recycle_concurrency_slots_are_recycled_at_once_but_never_every_worker() -> None:
    async def scenario() -> None:
        rig = Rig(Limits(max_memory=100 * MIB), concurrency=5)
        h = rig.h
        await h.started(3)
        assert rig.recycler.allowed == 2  # 5 asked, 3 workers: at least one old worker always serves
        rig.recycler.observe(h.now)  # first samples, under the limit
        for worker in h.workers():
            rig.memory[worker.pid] = 120 * MIB
        loop = asyncio.create_task(rig.recycler.run())
        try:
            await asyncio.wait_for(_until(h, lambda: len(h.starting()) == 2), 5.0)
            for _ in range(20):
                await h.settle()
                await asyncio.sleep(0.01)  # more looks: the third waits for a free place
            assert len(h.starting()) == 2 and rig.operations.running == "recycle"
            # Overlapping recycles: each marks its slot and the one waiting; none takes new clients meanwhile.
            assert [slot.pending for slot in h.fleet.slots] == [True, True, True]
            first, second = h.starting()
            first.on_ready()
            await h.settle()
            swapped = h.fleet.slots[first.slot]
            assert not swapped.pending and h.fleet.slots[second.slot].pending  # the other recycle still runs
            second.on_ready()
            await h.settle()
            for worker in list(h.spawned):
                if worker.state is WorkerState.DRAINING:
                    worker.exit(0)
            await asyncio.wait_for(_until(h, lambda: len(h.starting()) == 1), 5.0)
            assert {w.slot for w in h.starting()} == {slot.index for slot in h.fleet.slots if slot.replacements == {}}
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)

    run(scenario())


def test_no_recycle_starts_while_a_user_operation_waits_for_the_running_one() -> None:
    async def scenario() -> None:
        rig = Rig(Limits(max_requests=10), concurrency=2)
        h = rig.h
        await h.started(3)
        for worker in h.workers():
            _report(worker, 20)
        recycle = await rig.step()
        scale = asyncio.ensure_future(rig.operations.scale(2, lambda event: None))
        await h.settle()
        assert rig.operations.waiting == 1 and rig.recycler.due(h.now) == []  # the scale goes next
        await rig.finish_replacements(recycle)
        await h.settle()
        for worker in list(h.spawned):
            if worker.state is WorkerState.DRAINING:
                worker.exit(0)
        await h.settle()
        assert await asyncio.wait_for(scale, 1.0) == {"from": 3, "to": 2}

    run(scenario())


async def _until(h: Harness, condition: Callable[[], bool]) -> None:
    """Reconcile passes (the harness runs no fleet loop) until ``condition`` holds."""
    while not condition():
        await h.settle()
        await asyncio.sleep(0.005)


def test_workers_waiting_in_line_take_no_new_clients_while_the_first_is_recycled() -> None:
    # Two workers past --max-requests: the clients the first one's recycle closes must not reconnect to the second,
    # which is recycled right after it (they would be closed twice).
    async def scenario() -> None:
        rig = Rig(Limits(max_requests=100))
        h = rig.h
        await h.started(3)
        old = h.workers()
        _report(old[0], 150)
        _report(old[1], 20)
        _report(old[2], 120)
        task = await rig.step()
        assert [w.slot for w in h.starting()] == [0]
        assert [slot.pending for slot in h.fleet.slots] == [True, False, True]
        assert [load.eligible for load in slot_loads(h.fleet, [], stall_after=1.0)] == [False, True, False]
        await rig.finish_replacements(task)
        assert not any(slot.pending for slot in h.fleet.slots)  # until the next recycle marks its own line
        task = await rig.step()
        assert [w.slot for w in h.starting()] == [2] and h.fleet.slots[2].pending
        await rig.finish_replacements(task)

    run(scenario())
