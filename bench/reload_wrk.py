"""wrk in the background for as long as a scenario needs: started with a long ``-d``, stopped with SIGINT.

On SIGINT wrk stops its threads and prints its usual summary for the time it actually ran, so one wrk run can
span however long the reloads take. Failed requests are wrk's socket errors (connect, read, write, timeout) plus
its "Non-2xx or 3xx responses".
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from types import TracebackType

from reload_servers import die_with_parent

MAX_DURATION_S = 600  # the -d given to wrk; runs are always stopped long before
THREADS = 2
CONNECTIONS = 64

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed something this parser does not understand."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    non_2xx: int

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non_2xx

    def errors_text(self) -> str:
        parts = {
            "connect": self.connect_errors,
            "read": self.read_errors,
            "write": self.write_errors,
            "timeout": self.timeouts,
            "non-2xx": self.non_2xx,
        }
        return ", ".join(f"{k} {v}" for k, v in parts.items() if v) or "none"


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError("wrk is not installed: on Debian/Ubuntu run `apt-get install -y wrk`, then try again")
    return path


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    return out.splitlines()[0].split(" Copyright")[0] if out else "unknown"


def wrk_argv(wrk: str, url: str, *, close: bool, duration_s: int = MAX_DURATION_S) -> list[str]:
    argv = [wrk, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration_s}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def display_argv(url: str, *, close: bool) -> str:
    header = " -H 'Connection: close'" if close else ""
    return f"wrk -t{THREADS} -c{CONNECTIONS} -d<span> --latency{header} {url}"


def parse(output: str) -> WrkResult:
    total = _TOTAL.search(output)
    rps = _RPS.search(output)
    percentiles = {p: float(v) * _UNITS_MS[u] for p, v, u in _PERCENTILE.findall(output)}
    if total is None or rps is None or "99" not in percentiles:
        raise WrkError(f"cannot parse wrk output:\n{output}")
    errors = _SOCKET_ERRORS.search(output)
    connect, read, write, timeout = (int(n) for n in errors.groups()) if errors else (0, 0, 0, 0)
    non_2xx = _NON_2XX.search(output)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=float(total.group(2)) * _UNITS_MS[total.group(3)] / 1000.0,
        requests_per_s=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeout,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


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

    def finish(self) -> WrkResult:
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
