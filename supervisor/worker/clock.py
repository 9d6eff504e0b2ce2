"""The worker's one periodic timer (runs in each worker): the report's heartbeat, uvicorn's tick and the HTTP limits'
sweep, on a single wake-up.

A wake-up of an idle worker costs about 0.2 ms of CPU on these machines (an idle ``uvicorn --workers`` worker, 10
wake-ups a second, uses ~2.5 ms/s). With a loop each (the reporter every 50 ms, uvicorn's ``main_loop`` every 0.1 s,
the guard every 0.5 s) an idle wsup worker woke 32 times a second; on one clock it wakes 20 times.

- Every tick (REPORT_TICK_S): the heartbeat in the shared page and the report (``StatsReporter.tick``). Steering
  reads the heartbeat to notice a stalled loop within ~0.15 s, which is why the clock is not slower.
- Every other tick: uvicorn's ``Server.on_tick``, as its ``main_loop`` would call it every 0.1 s (the Date header,
  ``should_exit``, ``--limit-max-requests``). Once it says so, ``serving_ended`` is set; the clock goes on through
  the drain, whose reports and heartbeats the supervisor watches.
- Every TICK_S of the guard: the HTTP limits' sweep (``ConnectionGuard.on_tick``).
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

from ipc.stats import REPORT_TICK_S, StatsReporter
from supervisor.worker.http_limits import TICK_S as GUARD_TICK_S
from supervisor.worker.http_limits import ConnectionGuard

UVICORN_TICK_S: Final = 0.1  # uvicorn's main_loop sleeps this long between two on_tick calls
SERVER_EVERY: Final = round(UVICORN_TICK_S / REPORT_TICK_S)
GUARD_EVERY: Final = round(GUARD_TICK_S / REPORT_TICK_S)
# uvicorn's own wrap-around of its tick counter (its main_loop): on_tick updates the Date header when counter % 10 == 0.
_UVICORN_COUNTER_WRAP: Final = 864000


class TickingServer(Protocol):
    """What the clock calls of ``uvicorn.Server``."""

    async def on_tick(self, counter: int) -> bool: ...


class WorkerClock:
    def __init__(self, reporter: StatsReporter, guard: ConnectionGuard, server: TickingServer) -> None:
        self._reporter, self._guard, self._server = reporter, guard, server
        self.serving_ended = asyncio.Event()  # uvicorn's on_tick said stop: a drain signal, or --limit-max-requests
        self._task: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        """Start the clock and return once uvicorn's tick says stop (``Server.main_loop``'s part). The clock goes on
        through the drain, until ``stop()``. An error in the clock ends this too, with that error: a worker whose
        reports stopped must not go on serving as if nothing happened."""
        if await self._server.on_tick(0):  # main_loop's first call, at once: it sets the Date header
            self.serving_ended.set()
        ticking = self._task = asyncio.create_task(self._run())
        ended = asyncio.create_task(self.serving_ended.wait())
        try:
            done, _ = await asyncio.wait({ticking, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if ticking in done:
            ticking.result()  # raises what ended the clock
            raise RuntimeError("the worker's clock stopped")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        reporter, guard, server, serving_ended = self._reporter, self._guard, self._server, self.serving_ended
        tick = 0
        while True:
            due = loop.time() + REPORT_TICK_S
            await asyncio.sleep(REPORT_TICK_S)
            now = loop.time()
            tick += 1
            reporter.tick(now, max(0.0, (now - due) * 1000.0))
            if tick % GUARD_EVERY == 0:
                guard.on_tick()
            if tick % SERVER_EVERY == 0 and not serving_ended.is_set():
                if await server.on_tick(tick // SERVER_EVERY % _UVICORN_COUNTER_WRAP):
                    serving_ended.set()
