"""wrk's summary, parsed once for every benchmark: requests, seconds, requests/s, latency, errors; and finding wrk.

Failed requests are wrk's socket errors (connect, read, write, timeout) plus its "Non-2xx or 3xx responses".
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

WRK_INSTALL_HINT = "wrk is not installed: on Debian/Ubuntu run `apt-get install -y wrk` (as root), then try again"

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed something this parser does not understand."""


@dataclass(frozen=True, slots=True)
class WrkSummary:
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
        raise WrkError(WRK_INSTALL_HINT)
    return path


def wrk_version(wrk: str) -> str:
    # `wrk --version` prints its banner and exits with status 1.
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    return out.splitlines()[0].split(" Copyright")[0] if out else "unknown"


def parse(output: str) -> WrkSummary:
    total = _TOTAL.search(output)
    rps = _RPS.search(output)
    percentiles = {p: float(v) * _UNITS_MS[u] for p, v, u in _PERCENTILE.findall(output)}
    if total is None or rps is None or "99" not in percentiles:
        raise WrkError(f"cannot parse wrk output:\n{output}")
    errors = _SOCKET_ERRORS.search(output)
    connect, read, write, timeout = (int(n) for n in errors.groups()) if errors else (0, 0, 0, 0)
    non_2xx = _NON_2XX.search(output)
    return WrkSummary(
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
