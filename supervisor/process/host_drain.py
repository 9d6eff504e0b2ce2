"""Whether this host is draining (`wsup drain` / `wsup resume`): THE one place that says so.

While ``HostDrain.active`` is true, the agent-check answers ``drain`` (HAProxy sends no new connections; those open
stay) and the HTTP health answer must say 503. With ``move_websockets`` every serving worker also closes its
WebSockets with 1012 across the window (``ipc.signals.MOVE_WEBSOCKETS``) and goes on serving, so clients reconnect
through the balancer to the other hosts. With an agent-check port, the closes start once a balancer has heard
``drain`` (else the first clients would reconnect to this same host); ``resume`` ends it and cancels the closes
not yet done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Final

from ipc.counters import MAX_MOVE_WINDOW_MS
from ipc.errors import ConfigError
from ipc.signals import MOVE_WEBSOCKETS
from supervisor.process.slots import WorkerHandle
from supervisor.process.worker_state import WorkerState

logger = logging.getLogger("wsup.supervisor")
MAX_WINDOW_S: Final = MAX_MOVE_WINDOW_MS / 1000
# How long a move waits for a balancer to ask the agent (HAProxy's agent-inter defaults to 2 s).
BALANCER_WAIT_S: Final = 10.0
Spawn = Callable[[str, Coroutine[Any, Any, None]], None]


class HostDrain:
    def __init__(
        self,
        serving: Callable[[], Iterable[WorkerHandle]],
        default_window: float,
        spawn: Spawn,
        balancer_heard: Callable[[float], Awaitable[bool]] | None = None,
    ) -> None:
        self.active = False
        self.since: float | None = None  # wall clock, for status
        self.move_websockets = False
        self.window: float | None = None
        self.moved_from: dict[int, int] = {}  # pid -> its WebSockets when the move was asked (from its report)
        self.move_state: str | None = None  # "waiting for the balancer", "moving", or None
        self._serving = serving
        self._default_window = default_window
        self._spawn = spawn
        self._balancer_heard = balancer_heard
        self._generation = 0  # a move outlived by a resume (or a newer drain) does nothing

    def start(self, *, move_websockets: bool, window: float | None) -> dict[str, Any]:
        if window is not None and (not 0 <= window <= MAX_WINDOW_S or window != window):
            raise ConfigError(f"drain --window must be between 0 and {MAX_WINDOW_S:g} seconds, got {window}")
        if not self.active:
            self.since = time.time()
        self.active = True
        logger.info("host draining%s", " and moving its WebSockets" if move_websockets else "")
        if move_websockets:
            self.move_websockets = True
            self.window = self._default_window if window is None else window
            self.moved_from = {}
            self._generation += 1
            self.move_state = "waiting for the balancer" if self._balancer_heard else "moving"
            self._spawn("host-drain-move", self._move(self._generation, self.window))
        return self.describe()

    async def _move(self, generation: int, window: float) -> None:
        if self._balancer_heard is not None and not await self._balancer_heard(BALANCER_WAIT_S):
            logger.warning("no balancer asked the agent for %gs: moving WebSockets anyway", BALANCER_WAIT_S)
        if generation != self._generation or not self.active:
            return  # resumed (or drained again) meanwhile
        self.move_state = "moving"
        for worker in self._signalled(window):
            self.moved_from[worker.pid] = worker.last_counts().get("websocket", 0)

    def resume(self) -> dict[str, Any]:
        was = self.active
        self._generation += 1
        self.move_state = None
        if self.move_websockets:
            self._signalled(None)  # cancel the closes not done yet
        self.active = False
        self.since = None
        self.move_websockets = False
        self.window = None
        if was:
            logger.info("host resumed: taking new connections again")
        return {**self.describe(), "was_draining": was}

    def _signalled(self, window: float | None) -> list[WorkerHandle]:
        sent = []
        for worker in self._serving():
            if worker.state is not WorkerState.READY or worker.counters is None:
                continue  # a starting worker has no WebSocket to move; a draining one is closing them already
            worker.counters.request_move(window)
            # WorkerProcess has send_signal (it refuses a pid that already exited); WorkerHandle, the fleet's view
            # that its unit tests fake, does not name it, and the fleet needs no signal but its drains.
            send = getattr(worker, "send_signal", None)
            if send is not None:
                send(MOVE_WEBSOCKETS)
                sent.append(worker)
        return sent

    def describe(self) -> dict[str, Any]:
        return {
            "draining": self.active,
            "since": self.since,
            "move_websockets": self.move_websockets,
            "window_s": self.window,
            "move": self.move_state,
            "moved_workers": len(self.moved_from),
            "moved_websockets": sum(self.moved_from.values()),
        }
