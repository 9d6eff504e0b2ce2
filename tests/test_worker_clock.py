"""supervisor/worker/clock.py: one timer drives the report, uvicorn's tick and the guard's sweep, in the order and
at the rates uvicorn's main_loop and the old separate loops had, and goes on through the drain. Recorders stand in
for the three parts (the real ones are exercised end to end by the worker tests); the clock and its loop are real."""

from __future__ import annotations

import asyncio

import pytest

from supervisor.worker.clock import GUARD_EVERY, SERVER_EVERY, WorkerClock

DEADLINE_S = 10.0


class _Recorder:
    """Counts the calls of one part and wakes a waiter once it has seen ``enough`` of them."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def record(self, value: object) -> None:
        self.calls.append(value)
        for wanted, future in self._waiters:
            if len(self.calls) >= wanted and not future.done():
                future.set_result(None)

    async def wait_for(self, count: int) -> None:
        if len(self.calls) >= count:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((count, future))
        await asyncio.wait_for(future, DEADLINE_S)


class _Reporter(_Recorder):
    def __init__(self, fail_at: int = 0) -> None:
        super().__init__()
        self.fail_at = fail_at

    def tick(self, now: float, loop_lag_ms: float) -> None:
        self.record(loop_lag_ms)
        if len(self.calls) == self.fail_at:
            raise OSError("the stats socket is gone")


class _Guard(_Recorder):
    def on_tick(self) -> None:
        self.record(None)


class _Server(_Recorder):
    def __init__(self, stop_at: int, reporter: _Reporter) -> None:
        super().__init__()
        self.stop_at = stop_at
        self.reporter = reporter
        self.reports_at_stop = -1

    async def on_tick(self, counter: int) -> bool:
        self.record(counter)
        if len(self.calls) <= self.stop_at:
            return False
        self.reports_at_stop = len(self.reporter.calls)
        return True


def _clock(reporter: _Reporter, guard: _Guard, server: _Server) -> WorkerClock:
    return WorkerClock(reporter, guard, server)  # type: ignore[arg-type]  # recorders in place of the real parts


def test_one_timer_runs_uvicorns_tick_the_report_and_the_sweep_and_goes_on_through_the_drain() -> None:
    async def scenario() -> None:
        reporter, guard = _Reporter(), _Guard()
        server = _Server(stop_at=3, reporter=reporter)
        clock = _clock(reporter, guard, server)
        await asyncio.wait_for(clock.serve(), DEADLINE_S)
        # uvicorn's main_loop: on_tick(0) at once, then 1, 2, 3... until it says stop (the 4th call here).
        assert server.calls == [0, 1, 2, 3]
        assert clock.serving_ended.is_set()
        # uvicorn's 0.1 s tick is every other report tick, after that tick's report.
        assert server.reports_at_stop == 3 * SERVER_EVERY
        # The drain: reports and sweeps go on, uvicorn's tick does not.
        await reporter.wait_for(2 * GUARD_EVERY)
        await guard.wait_for(2)
        assert server.calls == [0, 1, 2, 3]
        assert len(guard.calls) == len(reporter.calls) // GUARD_EVERY
        assert all(lag >= 0 for lag in reporter.calls)  # type: ignore[operator]
        clock.stop()

    asyncio.run(scenario())


def test_a_stop_at_the_first_tick_still_starts_the_clock_for_the_drain() -> None:
    async def scenario() -> None:
        reporter, guard = _Reporter(), _Guard()
        server = _Server(stop_at=0, reporter=reporter)  # a drain signal during startup
        clock = _clock(reporter, guard, server)
        await asyncio.wait_for(clock.serve(), DEADLINE_S)
        assert server.calls == [0]
        await reporter.wait_for(3)  # the heartbeats the supervisor watches during the drain
        clock.stop()

    asyncio.run(scenario())


def test_an_error_in_the_clock_ends_serving_with_that_error() -> None:
    async def scenario() -> None:
        reporter, guard = _Reporter(fail_at=2), _Guard()
        server = _Server(stop_at=1_000, reporter=reporter)
        clock = _clock(reporter, guard, server)
        with pytest.raises(OSError, match="the stats socket is gone"):
            await asyncio.wait_for(clock.serve(), DEADLINE_S)
        assert not clock.serving_ended.is_set()

    asyncio.run(scenario())
