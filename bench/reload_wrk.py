"""wrk in the background for as long as a scenario needs: started with a long ``-d``, stopped with SIGINT.

On SIGINT wrk stops its threads and prints its usual summary for the time it actually ran, so one wrk run can
span however long the reloads take. Failed requests are wrk's socket errors (connect, read, write, timeout) plus
its "Non-2xx or 3xx responses".
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import time
from types import TracebackType

from server_process import die_with_parent
from wrk_output import WrkError, WrkSummary, parse

MAX_DURATION_S = 600  # the -d given to wrk; runs are always stopped long before
THREADS = 2
CONNECTIONS = 64


def wrk_argv(wrk: str, url: str, *, close: bool, duration_s: int = MAX_DURATION_S) -> list[str]:
    argv = [wrk, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration_s}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def display_argv(url: str, *, close: bool) -> str:
    header = " -H 'Connection: close'" if close else ""
    return f"wrk -t{THREADS} -c{CONNECTIONS} -d<span> --latency{header} {url}"


class WrkRun:
    """``with WrkRun(argv) as run: ...; result = run.finish()``; the process never outlives the block."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.out = tempfile.TemporaryFile()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def __enter__(self) -> WrkRun:
        self.proc = subprocess.Popen(
            self.argv, stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        self.started = time.monotonic()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.out.close()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def finish(self) -> WrkSummary:
        """Stop wrk (SIGINT: it prints its summary) and parse what it printed."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            self.out.seek(0)
            raise WrkError(f"wrk ended early (exit {self.proc.returncode}): {self.out.read().decode(errors='replace')}")
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)
            raise WrkError("wrk did not stop within 30s of SIGINT") from None
        self.out.seek(0)
        output = self.out.read().decode(errors="replace")
        if self.proc.returncode != 0:
            raise WrkError(f"wrk exited with code {self.proc.returncode}: {output}")
        return parse(output)
