"""The servers under test (wsup, uvicorn --workers, gunicorn + uvicorn workers, granian): how each is started,
found ready, measured (CPU, memory of its master and each worker) and stopped with its whole process tree."""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
from server_process import StartedServer, free_port, gunicorn_worker_class, spawn

REPO = Path(__file__).resolve().parent.parent
APP = "app:asgi"
# A checkout of another wsup commit (`git worktree add DIR COMMIT`): server "wsup-baseline" runs its bin/wsup, on the
# same app and interpreter, to measure a change side by side with the code before it.
BASELINE_ENV = "WSUP_BENCH_BASELINE"
PATH = "/hello"
STOP_GRACE_S = 15.0
DISPLAY_ENV = {"WSUP_RUN_DIR": "/tmp/wsup-bench-XXXX"}  # a fresh temporary directory per benchmark


class ServerError(RuntimeError):
    """A server did not start, did not get ready in time, or could not be measured."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    argv: tuple[str, ...]  # "{port}" stands for the port
    worker_marker: str | None  # a worker's command line contains this; None: every direct child is a worker
    env: dict[str, str] = field(default_factory=dict)
    single_process: bool = False  # no master: the started process is the only worker (uvicorn --workers 1)

    def command(self, port: int) -> list[str]:
        return [arg.replace("{port}", str(port)) for arg in self.argv]

    def display(self) -> str:
        """The command as a reader would type it from the repository root (the venv's python shown as python)."""
        argv = [".venv/bin/python" if arg == sys.executable else arg.replace("{port}", "PORT") for arg in self.argv]
        env = " ".join(f"{k}={DISPLAY_ENV.get(k, v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(argv)


def _wsup(name: str, workers: int, run_dir: str, *extra: str, tree: str = "") -> ServerSpec:
    wsup = os.path.join(tree, "bin", "wsup")
    argv = (sys.executable, wsup, "start", APP, "-i", str(workers), "--port", "{port}", "--name", "bench-" + name)
    return ServerSpec(
        name,
        argv + extra + ("--no-access-log", "--log-level", "warning"),
        "supervisor.worker",
        {"WSUP_RUN_DIR": run_dir},
    )


def build_specs(workers: int, run_dir: str) -> dict[str, ServerSpec]:
    """Every server this benchmark knows; ``wsup-hash`` (the kernel's hash instead of wsup's steering) is a
    diagnostic that separates the cost of steering from that of counting and reporting."""
    py = sys.executable
    baseline = os.environ.get(BASELINE_ENV)
    specs = ({"wsup-baseline": _wsup("wsup-baseline", workers, run_dir, tree=baseline)} if baseline else {}) | {
        "wsup": _wsup("wsup", workers, run_dir),
        "wsup-hash": _wsup("wsup-hash", workers, run_dir, "--balance", "hash"),
        # wsup steering every connection to a worker's own queue, a stream of short ones too (issue 11).
        "wsup-no-shared": _wsup("wsup-no-shared", workers, run_dir, "--no-shared-queue"),
        "uvicorn": ServerSpec(
            "uvicorn",
            (py, "-m", "uvicorn", APP, "--workers", str(workers), "--port", "{port}")
            + ("--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"),
            "spawn_main",
            single_process=workers == 1,
        ),
        "gunicorn": ServerSpec(
            "gunicorn",
            (py, "-m", "gunicorn", APP, "-k", gunicorn_worker_class(), "-w", str(workers), "-b", "127.0.0.1:{port}")
            # No --access-logfile: gunicorn writes no access log; uvicorn's worker picks uvloop + httptools ("auto").
            + ("--log-level", "warning"),
            None,
        ),
        # A diagnostic (issue 11): uvicorn's workers on wsup's accept-queue layout (a socket of their own in a
        # reuseport group, the kernel's hash choosing), with no wsup code: what that layout alone costs.
        "uvicorn-reuseport": ServerSpec(
            "uvicorn-reuseport",
            (py, "bench/reuseport_uvicorn.py", "--workers", str(workers), "--port", "{port}"),
            None,
        ),
        # Report only (issue 11): a Rust HTTP server running the same ASGI app, to say how far off the Python
        # servers are. Not installed with wsup: `pip install granian`.
        "granian": ServerSpec(
            "granian",
            (py, "-m", "granian", "--interface", "asgi", "--workers", str(workers), "--host", "127.0.0.1")
            + ("--port", "{port}", "--loop", "uvloop", "--log-level", "warning", "--no-access-log", APP),
            None,
        ),
    }
    # The same uvicorn a second time: an A/A comparison, the noise floor of every ratio to uvicorn in one run.
    specs["uvicorn-again"] = replace(specs["uvicorn"], name="uvicorn-again")
    return specs


def _http_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", PATH)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


@dataclass(frozen=True, slots=True)
class Memory:
    rss: int
    uss: int
    pss: int


def _memory(proc: psutil.Process) -> Memory:
    info = proc.memory_full_info()
    return Memory(rss=info.rss, uss=info.uss, pss=getattr(info, "pss", 0))


@dataclass(frozen=True, slots=True)
class TreeMemory:
    master: Memory | None  # None: a single process, counted as the worker
    workers: tuple[Memory, ...]
    helpers: tuple[Memory, ...]  # other processes in the tree, e.g. uvicorn's multiprocessing resource tracker


@dataclass(frozen=True, slots=True)
class TreeCpu:
    """CPU seconds used by each part of the tree over an interval."""

    master: float
    workers: tuple[float, ...]
    helpers: float

    @property
    def total(self) -> float:
        return self.master + sum(self.workers) + self.helpers

    def __sub__(self, earlier: TreeCpu) -> TreeCpu:
        return TreeCpu(
            master=self.master - earlier.master,
            workers=tuple(a - b for a, b in zip(self.workers, earlier.workers, strict=True)),
            helpers=self.helpers - earlier.helpers,
        )


@dataclass(frozen=True, slots=True)
class StopResult:
    returncode: int | None
    killed: bool  # SIGTERM was not enough
    log_tail: str  # notable lines of the server's output (warnings, errors, tracebacks)


class RunningServer(StartedServer):
    """One started server: ``with RunningServer(spec, workers, log_dir) as server:`` always stops its tree."""

    def __init__(self, spec: ServerSpec, workers: int, log_dir: Path) -> None:
        self.spec = spec
        self.expected_workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{PATH}"
        self.log_path = log_dir / f"{spec.name}-{self.port}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.root: psutil.Process | None = None  # the started process: the master, or the only worker
        self.master: psutil.Process | None = None
        self.workers: list[psutil.Process] = []
        self.helpers: list[psutil.Process] = []
        self.stop_result: StopResult | None = None

    def start(self) -> None:
        self.popen = spawn(self.spec.command(self.port), cwd=REPO, env=self.spec.env, log_path=self.log_path)
        self.root = psutil.Process(self.popen.pid)
        self.master = None if self.spec.single_process else self.root

    def _classify(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        assert self.root is not None
        workers: list[psutil.Process] = [self.root] if self.spec.single_process else []
        helpers: list[psutil.Process] = []
        direct = {p.pid for p in self.root.children()}
        for proc in self.root.children(recursive=True):
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            marker = self.spec.worker_marker
            is_worker = not self.spec.single_process and (proc.pid in direct if marker is None else marker in cmdline)
            (workers if is_worker else helpers).append(proc)
        return workers, helpers

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the port answers 200 and all workers exist; raise with the server's output past the deadline."""
        assert self.popen is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ServerError(f"{self.spec.name} exited with code {self.popen.returncode}: {self.log_text()}")
            workers, helpers = self._classify()
            if len(workers) == self.expected_workers and _http_ok(self.port):
                self.workers = sorted(workers, key=lambda p: p.pid)
                self.helpers = helpers
                return
            time.sleep(0.1)
        raise ServerError(f"{self.spec.name} not ready within {timeout_s:g}s: {self.log_text()}")

    def cpu(self) -> TreeCpu:
        """Cumulative CPU seconds; subtract two readings for an interval."""
        return TreeCpu(
            master=_cpu_s(self.master) if self.master is not None else 0.0,
            workers=tuple(_cpu_s(w) for w in self.workers),
            helpers=sum(_cpu_s(h) for h in self.helpers),
        )

    def memory(self) -> TreeMemory:
        return TreeMemory(
            master=_memory(self.master) if self.master is not None else None,
            workers=tuple(_memory(w) for w in self.workers),
            helpers=tuple(_memory(h) for h in self.helpers),
        )

    def check_alive(self) -> None:
        """The same processes must serve throughout: a worker that died and was replaced would skew the figures."""
        for proc in {self.root, *self.workers} - {None}:
            assert proc is not None
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                raise ServerError(f"{self.spec.name}: process {proc.pid} died: {self.log_text()}")

    def log_text(self, limit: int = 2000) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text[-limit:] or "no output"

    def stop(self) -> StopResult:
        """SIGTERM the master, give it STOP_GRACE_S, then SIGKILL whatever is left of the tree."""
        if self.stop_result is not None:
            return self.stop_result
        if self.popen is None or self.root is None:
            self.stop_result = StopResult(None, False, "")
            return self.stop_result
        try:  # collected before the TERM: orphans of a master that exits are re-parented and harder to find
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            tree = [self.root, *self.workers, *self.helpers]
        killed = False
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                killed = True
        _gone, alive = psutil.wait_procs(tree[1:], timeout=0 if killed else 5)
        if killed or alive:
            killed = True
            for proc in [self.root, *alive]:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        returncode = self.popen.wait()
        self.stop_result = StopResult(returncode, killed, self._notable_output())
        return self.stop_result

    def _notable_output(self) -> str:
        words = ("Traceback", "ERROR", "CRITICAL", "WARNING", "Error", "error:")
        lines = [line for line in self.log_text(100_000).splitlines() if any(w in line for w in words)]
        return "\n".join(lines[-20:])
