"""supervisor/process/slots.py and worker_state.py: restart backoff, crash loops and the worker state machine."""

from __future__ import annotations

import pytest

from supervisor.process.slots import BACKOFF_MAX_S, CRASH_LOOP_FAILURES, HEALTHY_RUN_S, Slot, restart_delay
from supervisor.process.worker_state import _TRANSITIONS, IllegalTransitionError, WorkerState, checked_transition


def test_restart_backoff_grows_and_caps() -> None:
    delays = [restart_delay(n) for n in range(12)]
    assert delays[0] == 0.0
    assert delays[1:5] == [0.25, 0.5, 1.0, 2.0]
    assert max(delays) == BACKOFF_MAX_S
    assert delays == sorted(delays)


def test_slot_failures_reset_after_a_healthy_run() -> None:
    slot = Slot(0)
    for _ in range(CRASH_LOOP_FAILURES):
        slot.record_exit(now=100.0, ready_for=None, error="ImportError")
    assert slot.crash_loop and slot.last_error == "ImportError"
    assert slot.next_start_at == 100.0 + restart_delay(CRASH_LOOP_FAILURES)
    delay = slot.record_exit(now=200.0, ready_for=HEALTHY_RUN_S + 1, error=None)
    assert delay == 0.0 and not slot.crash_loop and slot.last_error == "ImportError"


def test_worker_state_machine() -> None:
    assert WorkerState.READY in _TRANSITIONS[WorkerState.STARTING]
    assert WorkerState.READY not in _TRANSITIONS[WorkerState.DRAINING]
    assert not _TRANSITIONS[WorkerState.STOPPED]
    # Every state can reach STOPPED (a kill -9 can happen at any time) except STOPPED itself.
    assert all(
        WorkerState.STOPPED in allowed for state, allowed in _TRANSITIONS.items() if state is not WorkerState.STOPPED
    )
    assert checked_transition(1, WorkerState.READY, WorkerState.READY) is WorkerState.READY
    with pytest.raises(IllegalTransitionError, match="DRAINING -> READY"):
        checked_transition(1, WorkerState.DRAINING, WorkerState.READY)
