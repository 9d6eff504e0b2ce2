"""What a request to the fleet waits on: a generic waiter, a batch of slot replacements, a scale-down's removals.

These records only collect outcomes and tell the requester; the fleet's reconcile pass decides and acts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipc.errors import OperationInterruptedError, ReloadFailedError
from supervisor.process.slots import Draining, Slot

logger = logging.getLogger("wsup.supervisor")
Progress = Callable[[dict[str, Any]], None]
STDERR_LINES_IN_ERROR = 8


def _retrieved(future: asyncio.Future[Any]) -> None:
    # A request whose caller went away (a cancelled control task) must not log "exception never retrieved".
    future.add_done_callback(lambda f: f.cancelled() or f.exception())


@dataclass(eq=False)
class Waiter:
    """Settles ``future`` with what ``check`` returns once it is not None, or with what it raises."""

    check: Callable[[], Any]
    future: asyncio.Future[Any]

    def __post_init__(self) -> None:
        _retrieved(self.future)

    def settle(self) -> bool:
        if self.future.done():  # cancelled by its caller
            return True
        try:
            result = self.check()
        except Exception as exc:
            self.future.set_exception(exc)
            return True
        if result is None:
            return False
        self.future.set_result(result)
        return True


@dataclass(eq=False)
class ReplaceBatch:
    """Slots replaced together: a replacement for each starts; once all are ready all are swapped in at once.

    In a chain of batches (a reload's), ``after`` is the batch before: this one's replacements start once that one
    is swapped in, while its old workers drain, and this one is swapped in once that drain has ended.
    """

    slots: list[Slot]
    reason: str
    progress: Progress
    done: asyncio.Future[list[dict[str, Any]]]
    after: ReplaceBatch | None = None
    promoted: bool = False
    waiting: int = 0  # old workers still draining
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def drained(self) -> bool:
        """Swapped in, and every old worker it drained has exited."""
        return self.promoted and not self.waiting

    def may_start(self) -> bool:
        return self.after is None or self.after.promoted

    def may_swap(self) -> bool:
        return self.after is None or self.after.drained

    def __post_init__(self) -> None:
        _retrieved(self.done)

    def replaced(self, slot: int, old_pid: int | None, new_pid: int, drained: dict[str, int], seconds: float) -> None:
        counts = {"http": drained.get("http", 0), "websocket": drained.get("websocket", 0)}
        event = {
            "event": "replaced",
            "slot": slot,
            "old_pid": old_pid,
            "new_pid": new_pid,
            "drained": counts,
            "seconds": round(seconds, 2),
        }
        self.events.append(event)
        self.progress(event)
        logger.info(
            "%s: slot %d %s -> %d, drained %d HTTP + %d WebSocket connections in %.2fs",
            self.reason, slot, old_pid, new_pid, counts["http"], counts["websocket"], seconds,
        )  # fmt: skip

    def on_old_exit(self, slot: int, new_pid: int) -> Callable[[Draining, float], None]:
        def exited(entry: Draining, now: float) -> None:
            self.waiting -= 1
            self.replaced(slot, entry.worker.pid, new_pid, entry.counts, now - entry.since)

        return exited

    def failure(self, slot: Slot) -> ReloadFailedError:
        candidate = slot.candidate
        assert candidate is not None
        ready = candidate.ready
        if ready.done() and not ready.cancelled() and ready.exception() is not None:
            reason = str(ready.exception())
        else:
            reason = candidate.error or f"exited with code {candidate.exited.result()}"
        tail = "\n".join(candidate.stderr_lines[-STDERR_LINES_IN_ERROR:])
        logger.error("%s stopped: slot %d replacement %d failed: %s", self.reason, slot.index, candidate.pid, reason)
        return ReloadFailedError(
            f"slot {slot.index}: replacement worker {candidate.pid} failed: {reason}; the {self.reason} was stopped"
            " and the old workers keep serving" + (f"\n{tail}" if tail and reason not in tail else "")
        )

    def fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self.events)


@dataclass(eq=False)
class Removal:
    """A scale-down: the slots it removes, the drain of each one's worker, and the events for the requester."""

    progress: Progress
    drained: dict[int, Draining] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    queue_wait_from: float | None = None  # when the fleet first looked at its slots' accept queues

    def removed(self, slot: int) -> None:
        entry = self.drained.get(slot)
        counts = entry.counts if entry is not None else {}
        event = {
            "event": "removed",
            "slot": slot,
            "pid": entry.worker.pid if entry is not None else None,
            "drained": {"http": counts.get("http", 0), "websocket": counts.get("websocket", 0)},
        }
        self.events.append(event)
        self.progress(event)

    def outcome(self, still_removing: bool) -> list[dict[str, Any]] | None:
        if self.interrupted:
            raise OperationInterruptedError("the instance is stopping")
        return None if still_removing else self.events
