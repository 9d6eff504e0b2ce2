"""What the machine is and how busy it is: CPU model, kernel, versions, load average, and CPU used by others.

Shared by every benchmark's report header (the names say throughput because that benchmark came first).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
PACKAGES = ("uvicorn", "gunicorn", "uvicorn-worker", "granian", "uvloop", "httptools", "starlette", "pyzmq")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def wsup_revision(repo: Path) -> str:
    """The commit benchmarked (read-only git; the working tree may hold uncommitted changes)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


@dataclass(frozen=True, slots=True)
class Machine:
    nproc: int
    cpu: str
    kernel: str
    date: str

    @classmethod
    def current(cls) -> Machine:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return cls(nproc=os.cpu_count() or 0, cpu=cpu_model(), kernel=platform.release(), date=now)


@dataclass(frozen=True, slots=True)
class CpuStat:
    """Machine-wide CPU seconds from /proc/stat: busy in processes (user, nice, system) and stolen by the host.

    Interrupt and softirq time is left out: much of it is the kernel's network processing of our own loopback
    traffic (0.15-0.25 cores under wrk, measured here), which would otherwise count as other people's load."""

    busy_s: float
    steal_s: float

    @classmethod
    def read(cls) -> CpuStat:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, _irq, _softirq, steal = (fields + [0] * 8)[:8]
        return cls(busy_s=(user + nice + system) / _CLK_TCK, steal_s=steal / _CLK_TCK)

    def __sub__(self, other: CpuStat) -> CpuStat:
        return CpuStat(self.busy_s - other.busy_s, self.steal_s - other.steal_s)


def busy_cores(interval_s: float = 1.0) -> float:
    """Machine-wide CPU in use over ``interval_s``, in cores."""
    before = CpuStat.read()
    time.sleep(interval_s)
    return (CpuStat.read() - before).busy_s / interval_s


def wait_for_quiet(below_cores: float, max_wait_s: float) -> float:
    """Wait (at most ``max_wait_s``) until other processes use less than ``below_cores``; return the last reading.

    Called between measurements, when none of our servers runs, so whatever is busy belongs to someone else."""
    deadline = time.monotonic() + max_wait_s
    busy = busy_cores()
    while busy >= below_cores and time.monotonic() < deadline:
        busy = busy_cores()
    return busy
