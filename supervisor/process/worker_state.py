"""A worker's life as the supervisor sees it, and the only transitions it may make."""

from __future__ import annotations

import enum


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.DRAINING, WorkerState.STOPPED}),
    WorkerState.READY: frozenset({WorkerState.DRAINING, WorkerState.STOPPED}),
    WorkerState.DRAINING: frozenset({WorkerState.STOPPED}),
    WorkerState.STOPPED: frozenset(),
}


class IllegalTransitionError(RuntimeError):
    pass


class WorkerStartError(Exception):
    """A worker exited or reported failure before it was ready. ``str()`` is the worker's own error."""


def checked_transition(pid: int, current: WorkerState, new: WorkerState) -> WorkerState:
    """``new`` if a worker in ``current`` may move there; raises naming both states otherwise."""
    if new is not current and new not in _TRANSITIONS[current]:
        raise IllegalTransitionError(f"worker {pid}: illegal transition {current.name} -> {new.name}")
    return new
