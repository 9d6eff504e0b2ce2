"""The three servers of the steering benchmark, started, watched and always stopped.

- ``uvicorn``: ``uvicorn --workers 4``: one socket shared by all workers, each new connection goes to whichever
  worker's ``accept()`` wins.
- ``wsup-hash``: ``wsup start -i 4 --balance hash``: one SO_REUSEPORT listener per worker, the kernel's 4-tuple hash.
- ``wsup``: ``wsup start -i 4`` (least-conn): the same listeners, steered by wsup's BPF program.

Every server runs in a session of its own and is stopped with its whole process tree (TERM, then KILL), also when
the benchmark fails or is interrupted; each child also gets SIGTERM from the kernel if the benchmark dies.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from server_process import StartedServer, alive, free_port, spawn, stop_tree

REPO = Path(__file__).resolve().parent.parent
APPS_DIR = REPO / "tests" / "apps"
SERVERS = ("uvicorn", "wsup-hash", "wsup")
STOP_GRACE_S = 20.0
READY_TIMEOUT_S = 90.0

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ipc import control  # noqa: E402  (the repository root is put on the path just above)
from ipc.endpoints import instance_paths  # noqa: E402


class ServerError(RuntimeError):
    """A server did not start, did not get ready, or died during the benchmark."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    argv: tuple[str, ...]  # "{port}" stands for the port
    worker_marker: str  # a worker's command line contains this
    wsup_name: str | None = None  # the instance name, for wsup
    env: dict[str, str] = field(default_factory=dict)

    def command(self, port: int) -> list[str]:
        return [arg.replace("{port}", str(port)) for arg in self.argv]

    def display(self) -> str:
        """The command as typed from the repository root (the venv's python as python, the port as 8000)."""
        argv = ["python" if arg == sys.executable else arg.replace("{port}", "8000") for arg in self.argv]
        return shlex.join(argv).replace(str(REPO) + "/", "")


def build_specs(app: str, workers: int, run_dir: str, tag: str) -> dict[str, ServerSpec]:
    """The three servers on ``app`` (``module:attr``; a module of tests/apps is imported from there)."""
    py = sys.executable
    app_dir = ("--app-dir", str(APPS_DIR)) if app.startswith("stall:") else ()
    # Every server logs at warning: uvicorn's info level writes 2-3 lines per WebSocket, which is not what is
    # measured here (and wsup's supervisor would relay them all).
    quiet = ("--no-access-log", "--log-level", "warning")

    def wsup(name: str, balance: str) -> ServerSpec:
        instance = f"bench-steer-{tag}-{name}"
        argv = (py, "bin/wsup", "start", app, "-i", str(workers), "--balance", balance, "--port", "{port}")
        return ServerSpec(
            name,
            argv + ("--name", instance) + app_dir + quiet,
            "supervisor.worker",
            instance,
            {"WSUP_RUN_DIR": run_dir},
        )

    return {
        "uvicorn": ServerSpec(
            "uvicorn",
            (py, "-m", "uvicorn", app, "--workers", str(workers), "--port", "{port}") + app_dir + quiet,
            "spawn_main",
        ),
        "wsup-hash": wsup("wsup-hash", "hash"),
        "wsup": wsup("wsup", "least-conn"),
    }


def health_pid(port: int) -> int | None:
    """The pid of the worker that answered ``GET /health`` on a new connection, None if nothing answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        body = response.read()
        return int(orjson.loads(body)["pid"]) if response.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        return None
    finally:
        conn.close()


class Server(StartedServer):
    """One started server: ``with Server(spec, workers, log_dir) as server:`` always stops its whole tree."""

    def __init__(self, spec: ServerSpec, workers: int, log_dir: Path) -> None:
        self.spec = spec
        self.workers = workers
        self.port = free_port()
        self.log_path = log_dir / f"{spec.name}-{self.port}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.master: psutil.Process | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        self.popen = spawn(self.spec.command(self.port), cwd=REPO, env=self.spec.env, log_path=self.log_path)
        self.master = psutil.Process(self.popen.pid)

    def worker_pids(self) -> set[int]:
        assert self.master is not None
        try:
            children = self.master.children(recursive=True)
        except psutil.Error:
            return set()
        pids = set()
        for proc in children:
            with contextlib.suppress(psutil.Error):
                if alive(proc) and self.spec.worker_marker in " ".join(proc.cmdline()):
                    pids.add(proc.pid)
        return pids

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()[-limit:] or "no output"
        except OSError:
            return "no output"

    def check_alive(self) -> None:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise ServerError(f"{self.name} exited with code {self.popen.returncode}: {self.log_tail()}")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> set[int]:
        """Wait until every worker answers (each one seen answering ``/health``); return the worker pids."""
        deadline = time.monotonic() + timeout_s
        answered: set[int] = set()
        while time.monotonic() < deadline:
            self.check_alive()
            pids = self.worker_pids()
            status = self.status()
            ready = status is None or status["totals"]["ready"] == self.workers
            if len(pids) == self.workers and ready:
                # Workers sharing one socket answer in no particular order: probe until each has answered once.
                for _ in range(50):
                    pid = health_pid(self.port)
                    if pid is not None:
                        answered.add(pid)
                if pids <= answered:
                    return pids
            time.sleep(0.1)
        raise ServerError(f"{self.name} not ready within {timeout_s:g}s: {self.log_tail()}")

    def status(self) -> dict[str, Any] | None:
        """``wsup status`` (through the control socket, quicker than the CLI); None for uvicorn."""
        if self.spec.wsup_name is None:
            return None
        os.environ["WSUP_RUN_DIR"] = self.spec.env["WSUP_RUN_DIR"]
        try:
            status: dict[str, Any] = control.call(instance_paths(self.spec.wsup_name).control, "status", timeout=10.0)
        except Exception:  # not up yet, or busy: the callers poll
            return None
        return status

    def websocket_counts(self) -> dict[int, int] | None:
        status = self.status()
        if status is None:
            return None
        return {int(w["pid"]): int(w["connections"]["websocket"]) for w in status["workers"] if w.get("pid")}

    def stop(self) -> None:
        """SIGTERM the master, give it STOP_GRACE_S, then SIGKILL whatever is left of the tree."""
        if self.popen is None or self.master is None:
            return
        stop_tree(self.popen, self.master, STOP_GRACE_S)
        self.popen = None
