"""The supervisor's view of one worker process (``WorkerProcess``), around a real child process."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import psutil
import pytest

from ipc.settings import WorkerSettings, WorkerSpec
from supervisor.process.worker_process import WorkerProcess
from supervisor.process.worker_state import WorkerState
from tests.wsup_harness import wait_until


def _spec() -> WorkerSpec:
    return WorkerSpec(WorkerSettings(app="app:asgi"), -1, 0, 1, 1, "ipc:///s", "ipc:///i", "ipc:///o")


def _zombie(pid: int) -> bool:
    return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


def test_an_exit_the_pidfd_watch_missed_is_found_by_poll_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    # The lost wake-up: no exit watch at all. A stop would wait on this worker forever without poll_exit.
    monkeypatch.setattr(WorkerProcess, "_watch_exit", lambda self, loop: None)

    async def scenario() -> None:
        popen = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; time.sleep(0.3); sys.exit(3)"], stderr=subprocess.PIPE
        )
        worker = WorkerProcess(_spec(), popen)
        try:
            worker.poll_exit()  # still running: nothing happens
            assert not worker.exited.done() and worker.state is WorkerState.STARTING
            await asyncio.to_thread(wait_until, lambda: _zombie(popen.pid), 10.0, 0.02, "the child's exit")
            worker.poll_exit()
            assert worker.exited.done() and worker.exited.result() == 3
            assert worker.state.value == WorkerState.STOPPED.value  # (mypy narrowed it to STARTING above)
            assert isinstance(worker.ready.exception(), Exception)  # a start that ended in an exit
            worker._on_exit(3)  # the watch firing late as well changes nothing
            worker.poll_exit()
            assert worker.exited.result() == 3
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()

    asyncio.run(scenario())
