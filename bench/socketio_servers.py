"""The servers of bench/socketio_cluster.py: the python-socketio bench app under wsup (--balance ip-hash) or under
uvicorn --workers, with the client manager chosen by BENCH_SIO_MANAGER, started and found ready."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
from broadcast_servers import BenchError, Running, _spawn, _wait, _workers_answering

BENCH = Path(__file__).resolve().parent
WORKERS = 4
APP = "socketio_bench_app:asgi"


def start_wsup(port: int, log: Path, manager: str, redis_url: str = "") -> Running:
    run_dir = tempfile.mkdtemp(prefix="wsup-sb", dir="/tmp")
    env = {**os.environ, "WSUP_RUN_DIR": run_dir, "BENCH_SIO_MANAGER": manager, "BENCH_REDIS_URL": redis_url}
    argv = [sys.executable, str(BENCH.parent / "bin" / "wsup"), "start", APP, "--app-dir", str(BENCH)]
    argv += ["-i", str(WORKERS), "--port", str(port), "--name", "bbench", "--no-access-log", "--log-level", "warning"]
    argv += ["--balance", "ip-hash"]
    running = Running(f"wsup ip-hash ({manager})", port, _spawn(argv, log, env), log, run_dir=run_dir)
    _started(running, lambda: _wsup_ready(running))
    return running


def _wsup_ready(running: Running) -> bool:
    with contextlib.suppress(Exception):
        totals = running.wsup_status()["totals"]
        return isinstance(totals, dict) and totals.get("ready") == WORKERS
    return False


def start_uvicorn(port: int, log: Path, manager: str, redis_url: str = "") -> Running:
    env = {**os.environ, "BENCH_SIO_MANAGER": manager, "BENCH_REDIS_URL": redis_url}
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH.parent), str(BENCH)])
    argv = [sys.executable, "-m", "uvicorn", APP, "--app-dir", str(BENCH), "--workers", str(WORKERS)]
    argv += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
    running = Running(f"uvicorn --workers {WORKERS} ({manager})", port, _spawn(argv, log, env), log)
    _started(running, lambda: _workers_answering(port, WORKERS))
    return running


def _started(running: Running, ready: Any) -> None:
    try:
        _wait(ready, running.name, running.proc, running.log)
    except BenchError:
        running.stop()
        raise


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)
