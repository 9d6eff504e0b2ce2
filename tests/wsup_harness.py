"""Test harness: start the real ``wsup`` CLI on a free port, talk to it, and always clean up what it started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
WSUP = [sys.executable, str(ROOT / "bin" / "wsup")]
APPS_DIR = Path(__file__).resolve().parent / "apps"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(predicate: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test with ``what`` past the deadline."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the condition may raise while the system is still getting there
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}; last error: {last_error}"
            )
        time.sleep(interval)


async def eventually(
    predicate: Callable[[], object], what: str, timeout: float = 20.0, detail: Callable[[], object] = str
) -> None:
    """``wait_until`` for coroutines: poll ``predicate`` without blocking the event loop the clients run on."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {detail()}")
        await asyncio.sleep(0.02)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run one CLI command to its end. Past ``timeout`` the test fails with what the command and its processes
    were doing (a hang is a bug to diagnose from the CI log, not only a timeout)."""
    command = [*WSUP, *args]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,  # so that a hang's whole tree can be killed
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        diagnosis = describe_hang(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"wsup {' '.join(args)} did not end within {timeout}s\n--- stderr\n{stderr}\n--- stdout\n{stdout}\n"
            f"{diagnosis}"
        ) from None
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def describe_hang(pid: int) -> str:
    """The process tree under ``pid`` with each process's state, and Python stacks where py-spy is installed."""
    lines = []
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return "--- the process is gone"
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    for proc in procs:
        try:
            lines.append(f"--- pid {proc.pid} {proc.status()}: {' '.join(proc.cmdline())[:200]}")
        except psutil.Error:
            continue
        if os.access(spy, os.X_OK):
            try:
                dump = subprocess.run([spy, "dump", "--pid", str(proc.pid)], capture_output=True, text=True, timeout=30)
            except subprocess.TimeoutExpired:  # the report of the hang must not hang or end in a second exception
                lines.append("(py-spy did not answer within 30 s)")
                continue
            lines.append(dump.stdout + dump.stderr)
    return "\n".join(lines)


class Instance:
    """One ``wsup start`` in the foreground, in its own session so that cleanup can kill everything it started."""

    def __init__(self, env: dict[str, str], port: int, name: str, app: str, args: list[str], cwd: Path) -> None:
        self.env, self.port, self.name, self.app = env, port, name, app
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.log_path = Path(env["WSUP_RUN_DIR"]) / f"{name}.test.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*WSUP, "start", app, "--port", str(port), "--name", name, "--no-access-log", *args],
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._tracked: set[psutil.Process] = set()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env, timeout=timeout)

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--name", self.name, "--json")
        assert result.returncode == 0, result.stderr
        status: dict[str, Any] = orjson.loads(result.stdout)
        self._track(status)
        return status

    def _track(self, status: dict[str, Any]) -> None:
        for worker in status["workers"] + status.get("draining", []):
            if worker.get("pid"):
                try:
                    self._tracked.add(psutil.Process(worker["pid"]))
                except psutil.NoSuchProcess:
                    pass

    def wait_ready(self, workers: int, timeout: float = 30.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.proc.poll() is None, f"wsup exited with {self.proc.returncode}:\n{self.log()}"
            status = self.status()
            ok = status["totals"]["ready"] == workers and not status.get("draining")
            return status if ok else None

        return wait_until(ready, timeout, 0.1, f"{workers} ready workers")

    def worker_pids(self) -> dict[int, int]:
        """slot -> pid of the ready workers."""
        return {w["slot"]: w["pid"] for w in self.status()["workers"] if w["state"] == "ready"}

    def all_processes(self) -> list[psutil.Process]:
        procs = set(self._tracked)
        try:
            root = psutil.Process(self.proc.pid)
            procs.add(root)
            procs.update(root.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def kill_everything(self) -> None:
        procs = self.all_processes()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self._log.close()
