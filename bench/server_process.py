"""Starting and stopping a server under test as a process tree, shared by every benchmark in bench/."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in a child between fork and exec: the kernel TERMs it if the benchmark dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn(command: Sequence[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output in ``log_path``, in a session of its own (a terminal's Ctrl-C reaches only
    the benchmark, which then stops the tree), and dying with the benchmark."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def stop_tree(popen: subprocess.Popen[bytes], root: psutil.Process, grace_s: float) -> None:
    """SIGTERM the root, give it ``grace_s``, then SIGKILL whatever is left of the tree."""
    try:  # collected before the TERM: orphans of a root that exits are re-parented and harder to find
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        tree = [root]
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(grace_s)
    _gone, alive = psutil.wait_procs(tree, timeout=2)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def gunicorn_worker_class() -> str:
    """uvicorn 0.54 still ships ``uvicorn.workers`` but deprecates it in favour of the ``uvicorn-worker`` package."""
    if importlib.util.find_spec("uvicorn_worker") is not None:
        return "uvicorn_worker.UvicornWorker"
    return "uvicorn.workers.UvicornWorker"


class StartedServer:
    """``with SomeServer(...) as server:``: ``start()`` on entry, ``stop()`` (the whole process tree) on any exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
