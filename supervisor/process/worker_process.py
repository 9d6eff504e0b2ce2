"""One worker process as the supervisor sees it (the fleet's ``WorkerHandle``): its state, exit, stderr and health.

The supervisor waits on a pidfd for the exit (no polling) and reads the worker's stderr through a pipe, echoing it
to its own log and keeping the last lines, which become the error of a worker that failed to start.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time

import psutil

from ipc.counters import ConnectionCounters
from ipc.messages import Report
from ipc.settings import PASSWORD_ENV, WorkerSpec
from supervisor.child_env import child_env, python_module
from supervisor.process.worker_state import WorkerStartError, WorkerState, checked_transition

logger = logging.getLogger("wsup.supervisor")
STDERR_TAIL_LINES = 20


class WorkerProcess:
    def __init__(self, spec: WorkerSpec, popen: subprocess.Popen[bytes]) -> None:
        self.spec = spec
        self.popen = popen
        self.pid = popen.pid
        self.state = WorkerState.STARTING
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self.ready_at: float | None = None
        self.last_report: Report | None = None
        # Its live connection counts, shared in memory (set by spawn): what steering reads between reports.
        self.counters: ConnectionCounters | None = None
        self.last_seen = self.started_at  # monotonic time of the last message from this worker
        self.error: str | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        # A start failure nobody awaited (say, during a stop) is not an "exception never retrieved".
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            self.metrics: psutil.Process | None = psutil.Process(self.pid)
            self.metrics.cpu_percent(None)  # prime: the first call always returns 0.0
        except psutil.Error:
            self.metrics = None
        self._watch_exit(loop)
        self._stderr_task = loop.create_task(self._pump_stderr())

    @classmethod
    def spawn(cls, spec: WorkerSpec, key_password: str | None = None) -> WorkerProcess:
        # Until it is ready, the worker's stderr comes through a pipe: the supervisor keeps its last lines for the
        # error of a failed start. Once ready, the worker points its stderr at ``log_fd`` (the supervisor's own),
        # so steady-state logs never queue on the supervisor's event loop, where they would delay steering.
        log_fd = os.dup(sys.stderr.fileno())
        counters = ConnectionCounters.create()
        spec = dataclasses.replace(spec, log_fd=log_fd, counters_fd=counters.fd)
        env = child_env()
        if key_password is not None:  # the spec is on the command line, readable by anyone on the host: not this
            env[PASSWORD_ENV] = key_password
        try:
            popen = subprocess.Popen(
                python_module("supervisor.worker", spec.to_json()),
                pass_fds=(spec.fd, log_fd, counters.fd) + ((spec.shared_fd,) if spec.shared_fd >= 0 else ()),
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
            )
        except BaseException:
            counters.close()
            raise
        finally:
            os.close(log_fd)
        counters.close_fd()
        worker = cls(spec, popen)
        worker.counters = counters
        return worker

    @property
    def slot(self) -> int:
        return self.spec.slot

    @property
    def generation(self) -> int:
        return self.spec.generation

    def transition(self, new: WorkerState) -> None:
        self.state = checked_transition(self.pid, self.state, new)

    # --- events -------------------------------------------------------------------------------------------
    def on_ready(self) -> None:
        if self.state is WorkerState.STARTING:
            self.transition(WorkerState.READY)
            self.ready_at = time.monotonic()
        self.last_seen = time.monotonic()
        if not self.ready.done():
            self.ready.set_result(None)

    def on_failed(self, error: str) -> None:
        self.error = error
        if not self.ready.done():
            self.ready.set_exception(WorkerStartError(error))

    def on_report(self, report: Report) -> None:
        self.last_report = report
        self.last_seen = time.monotonic()

    def poll_exit(self) -> None:
        """Reap the worker if it exited without its pidfd waking the loop (a safety net: it never should)."""
        if self.exited.done():
            return
        returncode = self.popen.poll()
        if returncode is not None:
            logger.warning("worker %d exited (code %d) unseen by its pidfd watch: found by the exit check", self.pid,
                           returncode)  # fmt: skip
            self._on_exit(returncode)

    def _on_exit(self, returncode: int) -> None:
        if self.exited.done():  # seen by both the pidfd watch and poll_exit
            return
        self.transition(WorkerState.STOPPED)
        if not self.ready.done():
            tail = " | ".join(self.stderr_tail) or "no output"
            self.ready.set_exception(WorkerStartError(self.error or f"exited with code {returncode}: {tail}"))
        self.exited.set_result(returncode)

    # --- plumbing -----------------------------------------------------------------------------------------
    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            # No pidfd (old kernel): a thread blocked in waitpid() is the portable fallback.
            waiter = loop.run_in_executor(None, self.popen.wait)
            waiter.add_done_callback(lambda f: self._on_exit(f.result()))
            return

        def readable() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._on_exit(self.popen.wait())

        loop.add_reader(pidfd, readable)

    async def _pump_stderr(self) -> None:
        stream = self.popen.stderr
        assert stream is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stream)
        try:
            while line := await reader.readline():
                text = line.decode(errors="replace").rstrip()
                self.stderr_tail.append(text)
                sys.stderr.write(text + "\n")
        except ValueError:  # a line longer than the limit: not worth crashing the pump for
            pass
        finally:
            transport.close()

    def send_signal(self, sig: int) -> None:
        if self.exited.done():
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill_tree(self) -> None:
        """SIGKILL the worker and anything it started: the last step of an escalation."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            children = []
        for proc in children:
            try:
                proc.kill()
            except psutil.Error:
                pass
        self.send_signal(signal.SIGKILL)

    def drain(self, sig: int) -> None:
        """Tell the worker to drain and exit (``ipc.signals``); the fleet escalates past the graceful timeout."""
        if self.state is not WorkerState.STOPPED:
            self.transition(WorkerState.DRAINING)
        self.send_signal(sig)

    def live_connections(self) -> int:
        """Connections it holds now: from the shared counts (exact, current), else its last report."""
        if self.counters is not None:
            return self.counters.read().live
        report = self.last_report
        return report.websocket + report.http if report else 0

    def usage(self) -> tuple[float, int]:
        if self.metrics is None or self.exited.done():
            return 0.0, 0
        try:
            return self.metrics.cpu_percent(None), self.metrics.memory_info().rss
        except psutil.Error:
            return 0.0, 0

    def last_counts(self) -> dict[str, int]:
        report = self.last_report
        return {"http": report.http, "websocket": report.websocket} if report else {"http": 0, "websocket": 0}

    @property
    def stderr_lines(self) -> list[str]:
        return list(self.stderr_tail)

    def report_age(self) -> float:
        """Seconds since the worker's event loop last showed life: its heartbeat in the shared page, or a message."""
        now = time.monotonic()
        seen = self.last_seen
        if self.counters is not None:
            beat = self.counters.heartbeat(now)
            if beat is not None and beat > seen:
                seen = beat
        return now - seen
