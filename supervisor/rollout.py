"""Rolling changes to a running instance: zero-downtime reload (``wsup reload``, SIGHUP), scale and restart.

A reload replaces slots in batches: the replacement starts on the slot's own socket, and only once it reports READY
is it swapped in and the old worker drained (SIGUSR1: stop accepting, finish requests, close keep-alive connections
at a clean point, close WebSockets with 1012 across the drain window). If a replacement fails, the reload stops,
the replacement is killed and the old workers keep serving: a broken deploy never takes the service down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ipc.errors import ConfigError, ReloadFailedError, ReloadInProgressError
from supervisor.config import MAX_WORKERS
from supervisor.slots import Slot
from supervisor.worker_process import WorkerProcess, WorkerStartError

if TYPE_CHECKING:
    from supervisor.supervisor import Supervisor

logger = logging.getLogger("wsup.rollout")
Progress = Callable[[dict[str, Any]], None]
HEARTBEAT_S = 1.0  # progress heartbeats keep `wsup reload` from mistaking a long drain for a dead supervisor


class Rollouts:
    """Runs one rolling operation at a time; a second request while one runs is refused, not queued."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.running: str | None = None

    @contextlib.asynccontextmanager
    async def _exclusive(self, what: str, progress: Progress) -> AsyncIterator[None]:
        if self.running is not None:
            raise ReloadInProgressError(f"a {self.running} is in progress: wait for it to finish, then try again")
        if self.sup.stopping:
            raise ReloadInProgressError("the instance is stopping")
        self.running = what

        async def beat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_S)
                progress({"event": "waiting", "operation": what})

        heartbeat = asyncio.create_task(beat())
        try:
            yield
        finally:
            heartbeat.cancel()
            self.running = None

    async def reload(self, progress: Progress, batch: int | None = None) -> dict[str, Any]:
        sup = self.sup
        batch = batch or sup.config.reload_batch
        if batch < 1:
            raise ConfigError(f"--batch must be at least 1, got {batch}")
        async with self._exclusive("reload", progress):
            started = time.monotonic()
            sup.reload_floor = sup.generation + 1
            replaced: list[dict[str, Any]] = []
            try:
                # Least-loaded first: the first replacement takes all of its predecessor's returning clients (it is
                # the only one taking connections), so it should be the smallest; surpluses of later slots are then
                # spread over every replaced slot still below its share.
                slots = sorted((s for s in sup.slots[: sup.target] if not s.retiring), key=_live_connections)
                for first in range(0, len(slots), batch):
                    group = slots[first : first + batch]
                    replaced += await self._replace(group, progress)
            finally:
                sup.reload_floor = None
                sup.steer(force=True)
            seconds = round(time.monotonic() - started, 2)
            logger.info("reload finished: %d slots replaced in %.2fs", len(replaced), seconds)
            return {"slots": replaced, "seconds": seconds}

    async def _replace(self, group: list[Slot], progress: Progress) -> list[dict[str, Any]]:
        sup = self.sup
        candidates = [sup.spawn(slot, assign=False) for slot in group]
        for slot, new in zip(group, candidates, strict=True):
            progress({"event": "starting", "slot": slot.index, "new_pid": new.pid})
        results = await asyncio.gather(
            *(new.wait_ready(sup.config.ready_timeout) for new in candidates), return_exceptions=True
        )
        failed = [(slot, new, r) for slot, new, r in zip(group, candidates, results, strict=True) if r is not None]
        if failed:
            for new in candidates:
                new.kill_tree()
            await asyncio.gather(*(new.exited for new in candidates), return_exceptions=True)
            slot, new, error = failed[0]
            tail = "\n".join(list(new.stderr_tail)[-8:])
            reason = str(error) if isinstance(error, WorkerStartError) else repr(error)
            logger.error("reload stopped: slot %d replacement %d failed: %s", slot.index, new.pid, reason)
            raise ReloadFailedError(
                f"slot {slot.index}: replacement worker {new.pid} failed: {reason}; the reload was stopped and the"
                f" old workers keep serving" + (f"\n{tail}" if tail and reason not in tail else "")
            )
        # Swap first, then drain: steering moves new connections to the replacements before the old ones close.
        swaps: list[tuple[Slot, WorkerProcess | None, WorkerProcess]] = []
        for slot, new in zip(group, candidates, strict=True):
            old = slot.worker
            slot.worker = new
            if old is not None:
                sup.retiring.append(old)
            swaps.append((slot, old, new))
        sup.steer(force=True)
        return list(await asyncio.gather(*(self._drain(slot, old, new, progress) for slot, old, new in swaps)))

    async def _drain(
        self, slot: Slot, old: WorkerProcess | None, new: WorkerProcess, progress: Progress
    ) -> dict[str, Any]:
        started = time.monotonic()
        report = old.last_report if old is not None else None
        drained = {"http": report.http if report else 0, "websocket": report.websocket if report else 0}
        if old is not None:
            await old.stop(signal.SIGUSR1, self.sup.config.graceful_timeout)
        event = {
            "event": "replaced",
            "slot": slot.index,
            "old_pid": old.pid if old else None,
            "new_pid": new.pid,
            "drained": drained,
            "seconds": round(time.monotonic() - started, 2),
        }
        progress(event)
        logger.info(
            "reload: slot %d %s -> %d, drained %d HTTP + %d WebSocket connections in %.2fs",
            slot.index, event["old_pid"], new.pid, drained["http"], drained["websocket"], event["seconds"],
        )  # fmt: skip
        return event

    async def scale(self, count: int, progress: Progress) -> dict[str, Any]:
        sup = self.sup
        if not 1 <= count <= MAX_WORKERS:
            raise ConfigError(f"scale needs a worker count between 1 and {MAX_WORKERS}, got {count}")
        async with self._exclusive("scale", progress):
            before = sup.target
            if count > before:
                await self._grow(count, progress)
            elif count < before:
                await self._shrink(count, progress)
            return {"from": before, "to": count}

    async def _grow(self, count: int, progress: Progress) -> None:
        sup = self.sup
        assert sup.listeners is not None
        sup.listeners.grow(count)  # appended sockets take the next indices in the group: slot i is index i
        new_slots = [Slot(index) for index in range(sup.target, count)]
        sup.slots.extend(new_slots)
        sup.target = count
        workers = [sup.spawn(slot) for slot in new_slots]
        results = await asyncio.gather(
            *(w.wait_ready(sup.config.ready_timeout) for w in workers), return_exceptions=True
        )
        for slot, worker, result in zip(new_slots, workers, results, strict=True):
            progress(
                {"event": "added", "slot": slot.index, "pid": worker.pid, "error": str(result) if result else None}
            )
        sup.steer(force=True)

    async def _shrink(self, count: int, progress: Progress) -> None:
        sup = self.sup
        assert sup.listeners is not None
        # Highest slots first: closing the last socket of a reuseport group moves no other socket's index.
        for slot in reversed(sup.slots[count:]):
            slot.retiring = True
            sup.steer(force=True)  # weight 0 before the drain, so its accept queue stays empty
            worker = slot.worker
            report = worker.last_report if worker else None
            if worker is not None:
                await worker.stop(signal.SIGUSR1, sup.config.graceful_timeout)
            sup.arrivals.disarm()  # it watches the socket about to close, whose fd number may be reused at once
            sup.listeners.shrink(slot.index)
            sup.slots.remove(slot)
            sup.target = len(sup.slots)
            sup.steer_and_watch(force=True)  # the group is smaller: rebuild the program for the remaining indices
            progress(
                {
                    "event": "removed",
                    "slot": slot.index,
                    "pid": worker.pid if worker else None,
                    "drained": {"http": report.http if report else 0, "websocket": report.websocket if report else 0},
                }
            )

    async def restart(self, progress: Progress) -> dict[str, Any]:
        """Stop every worker at once and start new ones: not zero-downtime, for when that is what is wanted.

        The listeners stay open, so connections that arrive meanwhile wait in the accept queues instead of being
        refused, and are served once the new workers are up.
        """
        sup = self.sup
        async with self._exclusive("restart", progress):
            started = time.monotonic()
            old = [slot.worker for slot in sup.slots if slot.worker is not None]
            sup.reload_floor = sup.generation + 1
            try:
                for slot in sup.slots:
                    slot.worker = None
                    slot.next_start_at = float("inf")  # reconcile must not respawn while we restart
                sup.retiring.extend(old)
                await asyncio.gather(*(w.stop(signal.SIGUSR1, sup.config.graceful_timeout) for w in old))
                workers = [sup.spawn(slot) for slot in sup.slots]
                for slot in sup.slots:
                    slot.next_start_at = 0.0
                results = await asyncio.gather(
                    *(w.wait_ready(sup.config.ready_timeout) for w in workers), return_exceptions=True
                )
            finally:
                sup.reload_floor = None
                for slot in sup.slots:
                    slot.next_start_at = min(slot.next_start_at, time.monotonic())
                sup.steer(force=True)
            errors = [f"slot {w.slot}: {r}" for w, r in zip(workers, results, strict=True) if r is not None]
            if errors:
                raise ReloadFailedError("restart: " + "; ".join(errors) + " (failed slots are retried with backoff)")
            return {"pids": [w.pid for w in workers], "seconds": round(time.monotonic() - started, 2)}


def _live_connections(slot: Slot) -> int:
    return slot.worker.live_connections() if slot.worker is not None else 0
