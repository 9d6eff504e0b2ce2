"""The fleet's transitions, without processes: workers are plain objects whose readiness and exit the test decides,
the clock is the test's, and each reconcile pass is run by hand."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from ipc.counters import ConnectionCounters
from ipc.errors import OperationInterruptedError, ReloadFailedError, StartupError
from ipc.messages import Report
from ipc.signals import DRAIN_FOR_REPLACEMENT, DRAIN_FOR_STOP
from supervisor.process.fleet import Fleet, FleetTiming, Phase
from supervisor.process.operations import Operations, reload_order
from supervisor.process.reconcile import REMOVAL_QUEUE_WAIT_S
from supervisor.process.worker_state import WorkerStartError, WorkerState

T = TypeVar("T")
_pids = itertools.count(1000)


class FakeWorker:
    """A worker the test drives: ``become_ready()``, ``fail()``, ``exit()``; it records the signals it got."""

    def __init__(self, slot: int, generation: int, now: float) -> None:
        loop = asyncio.get_running_loop()
        self.pid = next(_pids)
        self._slot, self._generation = slot, generation
        self.state = WorkerState.STARTING
        self.error: str | None = None
        self.started_at = now
        self.ready_at: float | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.last_report: Report | None = None
        self.counters: ConnectionCounters | None = None
        self.signals: list[int] = []
        self.killed = False
        self.age = 0.0
        self.live = 0

    @property
    def slot(self) -> int:
        return self._slot

    @property
    def generation(self) -> int:
        return self._generation

    def on_ready(self) -> None:
        self.state = WorkerState.READY
        self.ready_at = self.started_at
        self.ready.set_result(None)

    def on_failed(self, error: str) -> None:
        self.error = error
        self.ready.set_exception(WorkerStartError(error))

    def on_report(self, report: Report) -> None:
        self.last_report = report

    def drain(self, sig: int) -> None:
        self.signals.append(sig)
        if self.state is not WorkerState.STOPPED:
            self.state = WorkerState.DRAINING

    def kill_tree(self) -> None:
        self.killed = True
        self.exit(-9)

    def exit(self, code: int = 0) -> None:
        self.state = WorkerState.STOPPED
        if not self.ready.done():
            self.ready.set_exception(WorkerStartError(self.error or f"exited with code {code}"))
        if not self.exited.done():
            self.exited.set_result(code)

    def report_age(self) -> float:
        return self.age

    def poll_exit(self) -> None:
        """The tests set ``exited`` themselves."""

    def live_connections(self) -> int:
        return self.live

    def usage(self) -> tuple[float, int]:
        return 0.0, 0

    def last_counts(self) -> dict[str, int]:
        return {"http": 0, "websocket": self.live}

    @property
    def stderr_lines(self) -> list[str]:
        return ["Traceback ...", "ImportError: boom"] if self.error else []


class FakeSockets:
    def __init__(self) -> None:
        self.count = 0
        self.calls: list[tuple[str, int]] = []
        self.waiting: dict[int, int] = {}  # slot -> connections in its accept queue

    def grow(self, count: int) -> None:
        self.count = count
        self.calls.append(("grow", count))

    def shrink(self, count: int) -> None:
        self.count = count
        self.calls.append(("shrink", count))

    def queued(self, slot: int) -> int:
        return self.waiting.get(slot, 0)


class Harness:
    def __init__(self, graceful: float = 30.0) -> None:
        self.now = 100.0
        self.spawned: list[FakeWorker] = []
        self.sockets = FakeSockets()
        self.changes = 0
        self.fleet = Fleet(
            self._launch,
            self.sockets,
            FleetTiming(ready_timeout=60.0, heartbeat_timeout=30.0, graceful_timeout=graceful),
            on_change=self._changed,
            clock=lambda: self.now,
        )

    def _launch(self, slot: int, generation: int) -> FakeWorker:
        worker = FakeWorker(slot, generation, self.now)
        self.spawned.append(worker)
        return worker

    def _changed(self) -> None:
        self.changes += 1

    async def settle(self) -> None:
        """A few reconcile passes with the event loop turning in between, as the real loop would run them."""
        for _ in range(4):
            self.fleet.reconcile()
            await asyncio.sleep(0)

    def workers(self) -> list[FakeWorker]:
        return [slot.worker for slot in self.fleet.slots]  # type: ignore[misc]

    def starting(self) -> list[FakeWorker]:
        return [w for w in self.spawned if w.state is WorkerState.STARTING]

    async def reload_first_ready(self) -> tuple[asyncio.Future[dict[str, Any]], FakeWorker]:
        """Start a reload one slot at a time and make its first replacement ready (swapped in, old one draining)."""
        reload = asyncio.ensure_future(Operations(self.fleet, default_batch=1).reload(lambda event: None))
        await self.settle()
        (first,) = self.starting()
        first.on_ready()
        await self.settle()
        return reload, first

    def old_workers_exit(self) -> None:
        for entry in list(self.fleet.draining):
            entry.worker.exit()  # type: ignore[attr-defined]

    async def started(self, count: int) -> None:
        self.sockets.grow(count)
        task = asyncio.ensure_future(self.fleet.start(count))
        await self.settle()
        for worker in self.starting():
            worker.on_ready()
        await self.settle()
        await task


def run(test: Callable[[Harness], Coroutine[Any, Any, None]], **kwargs: Any) -> None:
    async def main() -> None:
        await test(Harness(**kwargs))

    asyncio.run(main())


async def _finish(task: Awaitable[T]) -> T:
    return await asyncio.wait_for(task, 1.0)


def test_start_spawns_one_worker_per_slot_and_runs_once_all_are_ready() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(4)
        assert [w.slot for w in h.workers()] == [0, 1, 2, 3]
        assert [w.generation for w in h.workers()] == [1, 2, 3, 4]
        assert h.fleet.phase is Phase.RUNNING and h.changes >= 1

    run(scenario)


def test_a_failed_first_worker_fails_the_start_and_is_not_retried() -> None:
    async def scenario(h: Harness) -> None:
        task = asyncio.ensure_future(h.fleet.start(2))
        await h.settle()
        h.spawned[0].on_ready()
        h.spawned[1].on_failed("ImportError: no module named nope")
        h.spawned[1].exit(3)
        h.now += 60  # far past any backoff
        await h.settle()
        with pytest.raises(StartupError, match="worker 1 failed to start: ImportError: no module named nope"):
            await _finish(task)
        assert len(h.spawned) == 2

    run(scenario)


def test_reload_replaces_least_loaded_first_and_drains_only_after_the_swap() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(3)
        old = h.workers()
        for worker, live in zip(old, (50, 10, 30), strict=True):
            worker.live = live
        assert [s.index for s in reload_order(h.fleet.slots)] == [1, 2, 0]
        operations = Operations(h.fleet, default_batch=1)
        reload = asyncio.ensure_future(operations.reload(lambda event: None))
        await h.settle()
        assert [slot.pending for slot in h.fleet.slots] == [True, True, True]
        first = h.starting()
        assert [w.slot for w in first] == [1]  # one batch at a time, the least-loaded slot first
        assert old[1].signals == []  # not drained before its replacement is ready
        first[0].on_ready()
        await h.settle()
        assert h.fleet.slots[1].worker is first[0] and old[1].signals == [DRAIN_FOR_REPLACEMENT]
        draining = old[1]
        for index in (2, 0):
            # The next slot's replacement starts while the previous old worker drains, but is swapped in only once
            # that one has exited: one drain at a time.
            (candidate,) = h.starting()
            assert candidate.slot == index
            candidate.on_ready()
            await h.settle()
            assert h.fleet.slots[index].worker is old[index] and old[index].signals == []
            assert h.fleet.slots[index].pending
            draining.exit()
            await h.settle()
            assert h.fleet.slots[index].worker is candidate and old[index].signals == [DRAIN_FOR_REPLACEMENT]
            draining = old[index]
        assert h.starting() == []
        draining.exit()
        await h.settle()
        result = await _finish(reload)
        assert [event["slot"] for event in result["slots"]] == [1, 2, 0]
        assert not h.fleet.replacing and operations.running is None
        assert not any(slot.pending for slot in h.fleet.slots)
        assert all(w.generation >= 4 for w in h.workers())
        assert [slot.last_reason for slot in h.fleet.slots] == ["reload"] * 3

    run(scenario)


def test_a_failed_replacement_rolls_back_and_the_old_workers_keep_serving() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(2)
        old = h.workers()
        operations = Operations(h.fleet, default_batch=2)
        reload = asyncio.ensure_future(operations.reload(lambda event: None))
        await h.settle()
        good, bad = sorted(h.starting(), key=lambda w: w.slot)
        good.on_ready()
        bad.on_failed("ImportError: boom")
        await h.settle()
        with pytest.raises(ReloadFailedError, match="slot 1: replacement worker .* failed: ImportError: boom"):
            await _finish(reload)
        assert h.workers() == old and all(w.signals == [] for w in old)
        assert bad.killed  # failed: killed
        assert good.signals == [DRAIN_FOR_REPLACEMENT]  # ready, so it may hold connections: drained, not killed
        assert h.fleet.candidates() == [] and operations.running is None

    run(scenario)


def test_scale_down_during_a_crash_loop_removes_the_highest_slots() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(4)
        for _ in range(3):  # slot 3 crashes in a loop: each next worker waits out a growing backoff
            crashing = h.fleet.slots[3].worker
            assert isinstance(crashing, FakeWorker)
            crashing.exit(1)
            await h.settle()
            h.now += 0.6
            await h.settle()
        assert h.fleet.slots[3].crash_loop and h.fleet.slots[3].worker is None  # waiting out a 1 s backoff
        changes = h.changes
        survivor = h.workers()[2]
        shrink = asyncio.ensure_future(h.fleet.shrink(2, lambda event: None))
        await asyncio.sleep(0)
        assert h.changes > changes  # steering heard of it before any drain
        await h.settle()
        assert survivor.signals == [DRAIN_FOR_REPLACEMENT]
        assert h.sockets.calls[-1] == ("shrink", 3)  # slot 3 had no worker to drain: closed at once
        survivor.exit()
        await h.settle()
        events = await _finish(shrink)
        assert [e["slot"] for e in events] == [3, 2]
        assert h.sockets.count == 2 and [s.index for s in h.fleet.slots] == [0, 1]
        assert h.spawned[-1].state is not WorkerState.STARTING  # nothing respawned on a removed slot

    run(scenario)


def test_scale_down_drains_a_slot_only_once_its_accept_queue_is_empty() -> None:
    # Steering leaves the slot out when the removal starts; a connection placed on it just before still waits in its
    # queue. Draining the worker then would leave it there, and closing the socket would reset it.
    async def scenario(h: Harness) -> None:
        await h.started(3)
        removed, waiting = h.workers()[1], h.workers()[2]
        h.sockets.waiting = {1: 0, 2: 1}
        shrink = asyncio.ensure_future(h.fleet.shrink(1, lambda event: None))
        await h.settle()
        assert removed.signals == [DRAIN_FOR_REPLACEMENT] and waiting.signals == []
        h.now += REMOVAL_QUEUE_WAIT_S / 2
        h.sockets.waiting[2] = 0  # its worker took the connection
        await h.settle()
        assert waiting.signals == [DRAIN_FOR_REPLACEMENT]
        removed.exit()
        waiting.exit()
        await h.settle()
        assert [e["slot"] for e in await _finish(shrink)] == [2, 1]

    run(scenario)


def test_scale_down_stops_waiting_on_a_queue_that_never_empties() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(2)
        stuck = h.workers()[1]
        h.sockets.waiting = {1: 3}  # the kernel's hash keeps sending it connections, or its worker stopped accepting
        shrink = asyncio.ensure_future(h.fleet.shrink(1, lambda event: None))
        await h.settle()
        assert stuck.signals == []
        h.now += REMOVAL_QUEUE_WAIT_S
        await h.settle()
        assert stuck.signals == [DRAIN_FOR_REPLACEMENT]
        stuck.exit()
        await h.settle()
        assert [e["slot"] for e in await _finish(shrink)] == [1]

    run(scenario)


def test_stop_wins_over_a_running_reload() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(2)
        old = h.workers()
        operations = Operations(h.fleet, default_batch=1)
        reload = asyncio.ensure_future(operations.reload(lambda event: None))
        await h.settle()
        (candidate,) = h.starting()
        stop = asyncio.ensure_future(h.fleet.stop())
        await h.settle()
        with pytest.raises(OperationInterruptedError, match="stopping"):
            await _finish(reload)
        assert candidate.signals == [DRAIN_FOR_STOP]  # not yet serving: told to stop, which ends a starting worker
        assert [w.signals for w in old] == [[DRAIN_FOR_STOP], [DRAIN_FOR_STOP]]
        spawned = len(h.spawned)
        for worker in (*old, candidate):
            worker.exit()
        h.now += 60
        await h.settle()
        await _finish(stop)
        assert len(h.spawned) == spawned  # nothing was started after the stop
        with pytest.raises(OperationInterruptedError):
            await operations.reload(lambda event: None)

    run(scenario)


def test_stop_kills_what_does_not_exit_within_the_graceful_timeout() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(2)
        stop = asyncio.ensure_future(h.fleet.stop())
        await h.settle()
        slow, quick = h.spawned
        quick.exit()
        h.now += 4.9
        await h.settle()
        assert not slow.killed
        h.now += 0.2
        await h.settle()
        assert slow.killed and slow.signals == [signal.SIGTERM]
        await _finish(stop)

    run(scenario, graceful=5.0)


def test_a_crashed_worker_is_replaced_after_its_backoff_and_a_silent_one_is_killed() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(2)
        crashed, silent = h.workers()
        crashed.exit(1)
        await h.settle()
        assert h.fleet.slots[0].worker is None and h.fleet.slots[0].failures == 1
        h.now += 0.3
        await h.settle()
        replacement = h.fleet.slots[0].worker
        assert replacement is not None and replacement is not crashed and h.fleet.slots[0].restarts == 1
        silent.age = 31.0
        await h.settle()
        assert silent.killed and "no heartbeat" in (h.fleet.slots[1].last_error or "")
        assert h.fleet.slots[0].replacements == {"crash": 1} and h.fleet.slots[1].last_reason == "heartbeat"

    run(scenario)


def test_the_fleet_is_steady_only_while_every_slot_is_served_and_nothing_moves() -> None:
    """Its loop then looks 2 times a second instead of 10 (STEADY_TICK_S): only heartbeat timeouts can come due."""

    async def scenario(h: Harness) -> None:
        assert not h.fleet.steady  # starting
        await h.started(2)
        assert h.fleet.steady
        h.workers()[0].exit(1)
        await h.settle()
        assert not h.fleet.steady  # a slot waits for its backoff
        h.now += 0.3
        await h.settle()
        assert not h.fleet.steady  # its replacement starts
        h.fleet.slots[0].worker.on_ready()
        await h.settle()
        assert h.fleet.steady
        reload, _ = await h.reload_first_ready()
        assert not h.fleet.steady  # replacing, and an old worker draining
        h.old_workers_exit()
        await h.settle()
        for worker in h.starting():
            worker.on_ready()
        await h.settle()
        h.old_workers_exit()
        await h.settle()
        await _finish(reload)
        assert h.fleet.steady

    run(scenario)


def test_restart_starts_each_slot_again_once_its_old_worker_has_exited() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(2)
        old = h.workers()
        operations = Operations(h.fleet, default_batch=1)
        restart = asyncio.ensure_future(operations.restart(lambda event: None))
        await h.settle()
        assert [w.signals for w in old] == [[DRAIN_FOR_REPLACEMENT], [DRAIN_FOR_REPLACEMENT]]
        assert h.starting() == []  # held until the old workers exit
        old[0].exit()
        await h.settle()
        assert [w.slot for w in h.starting()] == [0]
        old[1].exit()
        await h.settle()
        for worker in h.starting():
            worker.on_ready()
        await h.settle()
        result = await _finish(restart)
        assert sorted(result["pids"]) == sorted(w.pid for w in h.workers())

    run(scenario)


def test_a_replacement_that_fails_while_the_previous_slot_drains_stops_the_reload_there() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(3)
        old = h.workers()
        operations = Operations(h.fleet, default_batch=1)
        reload = asyncio.ensure_future(operations.reload(lambda event: None))
        await h.settle()
        (first,) = h.starting()
        first.on_ready()
        await h.settle()
        (second,) = h.starting()
        second.on_failed("ImportError: boom")
        changes = h.changes
        await h.settle()
        assert second.killed and h.changes > changes
        # The slots not replaced keep their old workers and take connections again; nothing else is started.
        assert [slot.pending for slot in h.fleet.slots] == [False] * 3 and h.starting() == []
        (draining,) = (entry.worker for entry in h.fleet.draining if entry.worker in old)
        assert not reload.done()  # the first slot's drain still runs: the reload reports once it has ended
        draining.exit()
        await h.settle()
        with pytest.raises(ReloadFailedError, match="ImportError: boom"):
            await _finish(reload)
        assert sum(w in old for w in h.workers()) == 2 and first in h.workers()

    run(scenario)


def test_a_cancelled_reload_swaps_in_nothing_more() -> None:
    async def scenario(h: Harness) -> None:
        await h.started(2)
        old = h.workers()
        reload, first = await h.reload_first_ready()
        (second,) = h.starting()
        reload.cancel()
        await h.settle()
        assert second.signals == [DRAIN_FOR_REPLACEMENT] and not any(slot.pending for slot in h.fleet.slots)
        second.exit()
        await h.settle()
        assert h.fleet.slots[second.slot].worker in old and h.starting() == []

    run(scenario)


def test_steering_hears_of_a_swap_before_the_old_worker_is_told_to_drain() -> None:
    # A client closed at once by the drain reconnects within a millisecond: the program in force by then must
    # already leave out the slots this reload replaces next.
    async def scenario(h: Harness) -> None:
        await h.started(2)
        old = h.workers()
        seen: list[tuple[list[Any], list[int]]] = []  # at each re-plan: each slot's worker, the old workers' signals
        h.fleet._on_change = lambda: seen.append(
            ([slot.worker for slot in h.fleet.slots], [len(worker.signals) for worker in old])
        )
        reload, candidate = await h.reload_first_ready()
        first = next(signals for workers, signals in seen if candidate in workers)
        assert first == [0, 0]  # swapped in and re-planned, nobody told to drain yet
        assert old[candidate.slot].signals == [DRAIN_FOR_REPLACEMENT]
        reload.cancel()

    run(scenario)
