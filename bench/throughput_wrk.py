"""Running wrk (the HTTP load generator) to completion, with the CPU it used (parsing: wrk_output)."""

from __future__ import annotations

import resource
import subprocess
from dataclasses import dataclass

import wrk_output
from wrk_output import WrkError


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_s: float
    requests: int
    p50_ms: float
    p99_ms: float
    socket_errors: int  # connect + read + write + timeout, as wrk counts them
    non_2xx: int
    cpu_s: float  # user + system CPU that wrk itself used: it competes with the servers for the cores


def wrk_argv(wrk: str, url: str, *, threads: int, connections: int, duration_s: float, close: bool) -> list[str]:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def parse(output: str, cpu_s: float) -> WrkResult:
    summary = wrk_output.parse(output)
    return WrkResult(
        requests_per_s=summary.requests_per_s,
        requests=summary.requests,
        p50_ms=summary.p50_ms,
        p99_ms=summary.p99_ms,
        socket_errors=summary.socket_errors,
        non_2xx=summary.non_2xx,
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
