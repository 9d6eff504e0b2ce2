"""Running wrk (the HTTP load generator) and parsing its summary: requests per second, latency, errors, CPU."""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
from dataclasses import dataclass

WRK_INSTALL_HINT = "wrk is not installed: on Debian/Ubuntu run `apt-get install -y wrk` (as root), then try again"

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_PERCENTILE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkError(RuntimeError):
    """wrk failed or printed something this parser does not understand."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_s: float
    requests: int
    p50_ms: float
    p99_ms: float
    socket_errors: int  # connect + read + write + timeout, as wrk counts them
    non_2xx: int
    cpu_s: float  # user + system CPU that wrk itself used: it competes with the servers for the cores


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError(WRK_INSTALL_HINT)
    return path


def wrk_version(wrk: str) -> str:
    # `wrk --version` prints its banner and exits with status 1.
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10).stdout
    first = out.strip().splitlines()[0] if out.strip() else "unknown"
    return first.split(" Copyright")[0]


def wrk_argv(wrk: str, url: str, *, threads: int, connections: int, duration_s: float, close: bool) -> list[str]:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def parse(output: str, cpu_s: float) -> WrkResult:
    rps = _RPS.search(output)
    total = _TOTAL.search(output)
    percentiles = {p: float(v) * _UNITS_MS[u] for p, v, u in _PERCENTILE.findall(output)}
    if rps is None or total is None or "50" not in percentiles or "99" not in percentiles:
        raise WrkError(f"cannot parse wrk output:\n{output}")
    errors = _SOCKET_ERRORS.search(output)
    non_2xx = _NON_2XX.search(output)
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        requests=int(total.group(1)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        cpu_s=cpu_s,
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(argv: list[str], duration_s: float) -> WrkResult:
    """Run wrk to completion. Its CPU time is read from RUSAGE_CHILDREN: the servers, also our children, are
    reaped only when they stop, so the difference across this call is wrk's own."""
    before = _children_cpu_s()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    cpu_s = _children_cpu_s() - before
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with code {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return parse(proc.stdout, cpu_s)
