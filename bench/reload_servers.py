"""The three servers of the reload benchmark and how each one is reloaded.

- wsup: ``bin/wsup start ... -i 4``; reloaded with ``bin/wsup reload --json`` (blocks until every slot is replaced
  and drained; the supervisor reports the duration).
- uvicorn: ``uvicorn --workers 4``; reloaded with SIGHUP to the master. uvicorn 0.54's multiprocess supervisor
  handles SIGHUP in ``Multiprocess.restart_all``: one worker at a time, it starts a replacement, waits until that
  one answers a health check as started, then SIGTERMs and joins the old one.
- gunicorn with uvicorn workers: HUP to the arbiter spawns 4 new workers at once and SIGTERMs the old ones at once,
  without waiting for the new ones to be ready.

For uvicorn and gunicorn a reload is done when none of the old worker pids is alive and 4 workers run; for gunicorn
also when each new worker has logged "Application startup complete" (gunicorn's log lines carry the worker pid).
Every process tree started here is stopped (TERM, then KILL of what is left), also on exceptions and Ctrl-C.
"""

from __future__ import annotations

import http.client
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from server_process import StartedServer, alive, die_with_parent, free_port, gunicorn_worker_class, spawn, stop_tree

REPO = Path(__file__).resolve().parent.parent
APP = "app:asgi"
RELOAD_TIMEOUT_S = 90.0
STOP_GRACE_S = 20.0
POLL_S = 0.05


class ServerError(RuntimeError):
    """A server did not start, did not get ready, or a reload did not complete."""


@dataclass(frozen=True, slots=True)
class Reload:
    """One completed reload: its duration and the worker pids before and after."""

    seconds: float  # wsup: the supervisor's own figure; others: signal until all replaced and serving
    old_pids: tuple[int, ...]
    new_pids: tuple[int, ...]
    slots: tuple[dict[str, Any], ...] = ()  # wsup only: per-slot progress from `wsup reload --json`
    wall_s: float = 0.0  # wsup only: the CLI round trip as seen from here
    aborted: str | None = None  # the server gave up part-way (uvicorn: a replacement not ready in time)

    @property
    def replaced(self) -> int:
        return len(set(self.old_pids) - set(self.new_pids))


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    argv: tuple[str, ...]  # "{port}" stands for the port
    worker_marker: str | None  # a worker's command line contains this; None: every direct child is a worker
    env: dict[str, str] = field(default_factory=dict)

    def command(self, port: int) -> list[str]:
        return [arg.replace("{port}", str(port)) for arg in self.argv]

    def display(self) -> str:
        """The command as typed from the repository root (the venv's python shown as python, port as 8000)."""
        argv = ["python" if arg == sys.executable else arg.replace("{port}", "8000") for arg in self.argv]
        return shlex.join(argv)


def build_specs(workers: int, run_dir: str, wsup_log_level: str) -> dict[str, ServerSpec]:
    py = sys.executable
    # uvicorn and gunicorn log at info: only lifecycle lines (no access log), which tell when a worker is serving.
    return {
        "wsup": ServerSpec(
            "wsup",
            (py, "bin/wsup", "start", APP, "-i", str(workers), "--port", "{port}", "--name", "bench-reload")
            + ("--no-access-log", "--log-level", wsup_log_level),
            "supervisor.worker",
            {"WSUP_RUN_DIR": run_dir},
        ),
        "uvicorn": ServerSpec(
            "uvicorn",
            (py, "-m", "uvicorn", APP, "--workers", str(workers), "--port", "{port}")
            + ("--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "info"),
            "spawn_main",
        ),
        "gunicorn": ServerSpec(
            "gunicorn",
            (py, "-m", "gunicorn", APP, "-k", gunicorn_worker_class(), "-w", str(workers), "-b", "127.0.0.1:{port}")
            + ("--log-level", "info"),
            None,
        ),
    }


def http_ok(port: int, path: str = "/hello") -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _abort_line(log: str) -> str | None:
    """uvicorn's multiprocess supervisor gives up a restart when a replacement is not ready within 5 s."""
    for line in log.splitlines():
        if "aborting the restart" in line:
            return line.strip()
    return None


class Server(StartedServer):
    """One started server: ``with Server(spec, workers, log_dir) as server:`` always stops its whole tree."""

    def __init__(self, spec: ServerSpec, workers: int, log_dir: Path) -> None:
        self.spec = spec
        self.workers = workers
        self.port = free_port()
        self.log_path = log_dir / f"{spec.name}-{self.port}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.master: psutil.Process | None = None
        self.reload_log: list[Reload] = []

    @property
    def name(self) -> str:
        return self.spec.name

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self.popen = spawn(self.spec.command(self.port), cwd=REPO, env=self.spec.env, log_path=self.log_path)
        self.master = psutil.Process(self.popen.pid)

    # -- workers -----------------------------------------------------------------------------------------------

    def worker_procs(self) -> list[psutil.Process]:
        assert self.master is not None
        try:
            children = self.master.children(recursive=self.spec.worker_marker is not None)
        except psutil.Error:
            return []
        workers = []
        for proc in children:
            if not alive(proc):
                continue
            if self.spec.worker_marker is not None:
                try:
                    if self.spec.worker_marker not in " ".join(proc.cmdline()):
                        continue
                except psutil.Error:
                    continue
            workers.append(proc)
        return workers

    def worker_pids(self) -> set[int]:
        return {p.pid for p in self.worker_procs()}

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, limit: int = 2000) -> str:
        return self.log_text().strip()[-limit:] or "no output"

    def _serving(self, pids: set[int]) -> bool:
        """Whether these workers have finished startup (beyond being alive)."""
        if self.name == "gunicorn":
            text = self.log_text()
            return all(f"[{pid}] [INFO] Application startup complete" in text for pid in pids)
        if self.name == "uvicorn":
            return self.log_text().count("Application startup complete") >= len(pids)
        status = self.wsup_status()
        ready = [w for w in status.get("workers", []) if w.get("state") == "ready"]
        return len(ready) == self.workers and not status.get("draining") and status.get("operation") is None

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        assert self.popen is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ServerError(f"{self.name} exited with code {self.popen.returncode}: {self.log_tail()}")
            pids = self.worker_pids()
            if len(pids) == self.workers and http_ok(self.port) and self._serving(pids):
                return
            time.sleep(0.1)
        raise ServerError(f"{self.name} not ready within {timeout_s:g}s: {self.log_tail()}")

    def check_alive(self) -> None:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise ServerError(f"{self.name} exited with code {self.popen.returncode}: {self.log_tail()}")

    # -- wsup CLI ----------------------------------------------------------------------------------------------

    def wsup_cli(self, *args: str, timeout_s: float = RELOAD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "bin/wsup", *args, "--name", "bench-reload"],
            cwd=REPO,
            env={**os.environ, **self.spec.env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            preexec_fn=die_with_parent,
        )

    def wsup_status(self) -> dict[str, Any]:
        result = self.wsup_cli("status", "--json", timeout_s=20)
        if result.returncode != 0:
            return {}
        status: dict[str, Any] = orjson.loads(result.stdout)
        return status

    def websocket_counts(self) -> dict[int, int] | None:
        """wsup only: live WebSocket connections per worker pid as ``wsup status`` reports them."""
        if self.name != "wsup":
            return None
        workers = self.wsup_status().get("workers", [])
        return {int(w["pid"]): int(w["connections"]["websocket"]) for w in workers if w.get("pid")}

    # -- reload ------------------------------------------------------------------------------------------------

    def reload(self) -> Reload:
        self.check_alive()
        result = self._reload_wsup() if self.name == "wsup" else self._reload_by_signal()
        self.reload_log.append(result)
        return result

    def _reload_wsup(self) -> Reload:
        old = self.worker_pids()
        started = time.monotonic()
        result = self.wsup_cli("reload", "--json")
        wall = time.monotonic() - started
        if result.returncode != 0:
            raise ServerError(f"wsup reload failed (exit {result.returncode}): {result.stderr.strip()}")
        doc: dict[str, Any] = orjson.loads(result.stdout)
        new = tuple(sorted(int(s["new_pid"]) for s in doc["slots"]))
        return Reload(
            seconds=float(doc["seconds"]),
            old_pids=tuple(sorted(old)),
            new_pids=new,
            slots=tuple(doc["slots"]),
            wall_s=round(wall, 2),
        )

    def _reload_by_signal(self) -> Reload:
        assert self.master is not None
        old = self.worker_pids()
        offset = self.log_size()
        started = time.monotonic()
        self.master.send_signal(signal.SIGHUP)
        deadline = started + RELOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            current = self.worker_pids()
            if len(current) == self.workers and not current & old and self._serving(current):
                return Reload(round(time.monotonic() - started, 2), tuple(sorted(old)), tuple(sorted(current)))
            aborted = _abort_line(self.log_since(offset))
            if aborted is not None:
                seconds = round(time.monotonic() - started, 2)
                current = self._wait_for_workers(deadline)
                return Reload(seconds, tuple(sorted(old)), tuple(sorted(current)), aborted=aborted)
            time.sleep(POLL_S)
        raise ServerError(f"{self.name}: workers not all replaced {RELOAD_TIMEOUT_S:g}s after SIGHUP")

    def _wait_for_workers(self, deadline: float) -> set[int]:
        """After an aborted restart: wait until the server runs its full set of workers again."""
        current = self.worker_pids()
        while len(current) != self.workers and time.monotonic() < deadline:
            time.sleep(POLL_S)
            current = self.worker_pids()
        return current

    # -- stop --------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM the master, give it STOP_GRACE_S, then SIGKILL whatever is left of the tree."""
        if self.popen is None or self.master is None:
            return
        stop_tree(self.popen, self.master, STOP_GRACE_S)
        self.popen = None
