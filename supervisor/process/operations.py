"""Rolling changes to a running instance: zero-downtime reload (``wsup reload``, SIGHUP), scale, restart, and the
recycling of a worker past a limit (asked by ``supervisor.process.recycler``); one operation at a time, except that
recycles of different slots may overlap (the recycler bounds how many: ``--recycle-concurrency``).

Each is a sequence of requests to the fleet, which alone starts, swaps and drains workers. A reload replaces slots
in batches, least-loaded first: the replacement starts on the slot's own socket, and only once it reports READY is
it swapped in and the old worker drained (1012 to its WebSockets, spread over the drain window); the next batch's
replacements start meanwhile (``Fleet.replace``). Until its swap, a slot the operation will replace is pending and
takes no new connections while another serves (``Fleet.rolling``, ``slot_loads``): one disconnect per client. If a
replacement fails, the reload stops and the old workers keep serving: a broken deploy never takes the service down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ipc.errors import ConfigError, OperationInterruptedError, ReloadFailedError, ReloadInProgressError
from supervisor.config import MAX_WORKERS
from supervisor.process.batches import Progress
from supervisor.process.fleet import Fleet
from supervisor.process.slots import Slot

logger = logging.getLogger("wsup.rollout")
HEARTBEAT_S = 1.0  # progress heartbeats keep `wsup reload` from mistaking a long drain for a dead supervisor
# Told (operation, None) when one starts and (operation, "ok" | "failed" | "interrupted") when it ends: metrics and
# systemd's RELOADING=1/READY=1 follow operations through this, without polling.
Observer = Callable[[str, str | None], None]


def reload_order(slots: Sequence[Slot]) -> list[Slot]:
    """Least-loaded first: the first replacement takes all of its predecessor's returning clients (it is the only
    one taking connections), so it should be the smallest; surpluses of later slots then spread over every replaced
    slot still below its share."""

    def load(slot: Slot) -> int:
        return slot.worker.live_connections() if slot.worker is not None else 0

    return sorted((slot for slot in slots if not slot.removing), key=load)


def batches(slots: Sequence[Slot], size: int) -> list[list[Slot]]:
    return [list(slots[first : first + size]) for first in range(0, len(slots), size)]


class Operations:
    """Runs one rolling operation at a time; a second request while one runs is refused, not queued."""

    def __init__(self, fleet: Fleet, default_batch: int) -> None:
        self.fleet = fleet
        self.default_batch = default_batch
        self.running: str | None = None
        self._holders = 0  # operations running: 1, or the recycles running together
        self.waiting = 0  # user operations waiting for running recycles to finish
        self._idle = asyncio.Event()
        self._idle.set()
        self.observers: list[Observer] = []

    def _tell(self, what: str, outcome: str | None) -> None:
        for observer in self.observers:
            observer(what, outcome)

    @contextlib.asynccontextmanager
    async def _exclusive(self, what: str, progress: Progress) -> AsyncIterator[None]:
        async def beat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_S)
                progress({"event": "waiting", "operation": what})

        heartbeat = asyncio.create_task(beat())
        try:
            # A recycle is one slot, bounded by the drain: a user's operation waits for it instead of being refused
            # (a deploy script should not fail because a worker reached --max-requests at that moment).
            # Waiting, it goes next: no new recycle starts meanwhile (a line of recycles would otherwise starve it).
            self.waiting += what != "recycle"
            try:
                while self.running == "recycle" and what != "recycle":
                    await self._idle.wait()
            finally:
                self.waiting -= what != "recycle"
            if what == "recycle" and self.waiting:
                raise ReloadInProgressError("an operation is waiting for the running recycles to finish")
            # Recycles of different slots may run together: the fleet advances each replacement batch on its own.
            if self.running is not None and not (self.running == what == "recycle"):
                raise ReloadInProgressError(f"a {self.running} is in progress: wait for it to finish, then try again")
            if self.fleet.stopping:
                raise OperationInterruptedError("the instance is stopping")
            self.running = what
            self._holders += 1
            self._idle.clear()
            self._tell(what, None)
            outcome = "failed"
            try:
                yield
                outcome = "ok"
            except (OperationInterruptedError, asyncio.CancelledError):
                outcome = "interrupted"
                raise
            finally:
                self._holders -= 1
                if not self._holders:
                    self.running = None
                    self._idle.set()
                self._tell(what, outcome)
        finally:
            heartbeat.cancel()

    async def recycle(self, slot: Slot, pid: int, reason: str, waiting: Sequence[Slot] = ()) -> list[dict[str, Any]]:
        """Replace ``slot``'s worker ``pid`` (past a recycling limit) like one slot of a reload; nothing if another
        worker serves the slot by now (or the slot is being replaced already). ``waiting``: slots whose workers are
        to be recycled next."""
        async with self._exclusive("recycle", lambda event: None):
            if slot not in self.fleet.slots or slot.worker is None or slot.worker.pid != pid or slot.removing:
                return []
            if slot.batch is not None or slot.candidate is not None:
                return []
            # Its clients (and new ones) go to workers that are not about to be recycled, while any serves.
            pending = [slot, *(other for other in waiting if other in self.fleet.slots and not other.removing)]
            with self.fleet.rolling(pending):
                return await self.fleet.replace([[slot]], reason, lambda event: None)

    async def reload(self, progress: Progress, batch: int | None = None) -> dict[str, Any]:
        fleet = self.fleet
        size = batch or self.default_batch
        if size < 1:
            raise ConfigError(f"--batch must be at least 1, got {size}")
        async with self._exclusive("reload", progress):
            started = time.monotonic()
            order = reload_order(fleet.slots[: fleet.target])
            with fleet.rolling(order):
                replaced = await fleet.replace(batches(order, size), "reload", progress)
            seconds = round(time.monotonic() - started, 2)
            logger.info("reload finished: %d slots replaced in %.2fs", len(replaced), seconds)
            return {"slots": replaced, "seconds": seconds}

    async def scale(self, count: int, progress: Progress) -> dict[str, Any]:
        if not 1 <= count <= MAX_WORKERS:
            raise ConfigError(f"scale needs a worker count between 1 and {MAX_WORKERS}, got {count}")
        async with self._exclusive("scale", progress):
            before = self.fleet.target
            if count > before:
                await self.fleet.grow(count, progress)
            elif count < before:
                await self.fleet.shrink(count, progress)
            return {"from": before, "to": count}

    async def restart(self, progress: Progress) -> dict[str, Any]:
        """Drain every worker at once and start new ones: not zero-downtime, for when that is what is wanted.

        The listeners stay open, so connections that arrive meanwhile wait in the accept queues instead of being
        refused, and are served once the new workers are up.
        """
        fleet = self.fleet
        async with self._exclusive("restart", progress):
            started = time.monotonic()
            with fleet.rolling(fleet.slots[: fleet.target]):
                pids, errors = await fleet.restart()
            if errors:
                raise ReloadFailedError("restart: " + "; ".join(errors) + " (failed slots are retried with backoff)")
            return {"pids": pids, "seconds": round(time.monotonic() - started, 2)}
