"""What the admin endpoint's live dashboards cost the workers: p99 of ``/hello`` under wrk with and without open
dashboards, side by side, alternating (off, on, off, on...) so that drift on a shared machine hits both.

A dashboard viewer here is what the supervisor serves to a browser tab: one ``GET /events`` stream, read as fast
as it comes. Real browser tabs would add their own rendering CPU on this same machine, which is the browser's
cost, not wsup's. Also reported: the supervisor's CPU time during each run.

    python bench/admin_cost.py [--seconds 8] [--rounds 2] [--workers 2] [--dashboards 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from server_process import free_port, spawn, stop_tree
from wrk_output import find_wrk, parse

ROOT = Path(__file__).resolve().parent.parent


class Viewer(threading.Thread):
    """One open dashboard: reads the server-sent events until told to stop."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: bench\r\n\r\n")
        self.received = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.received += len(chunk)

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        self.join(timeout=5)


def wait_healthy(admin: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("bench: wsup did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dashboards", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    wrk = find_wrk()
    port, admin = free_port(), free_port()
    run_dir = tempfile.mkdtemp(prefix="wsup-b", dir="/tmp")
    command = [sys.executable, str(ROOT / "bin" / "wsup"), "start", "app:asgi", "-i", str(args.workers)]
    command += ["--port", str(port), "--admin", str(admin), "--name", "bench", "--no-access-log"]
    popen = spawn(command, cwd=ROOT, env={"WSUP_RUN_DIR": run_dir}, log_path=Path(run_dir) / "wsup.out")
    supervisor = psutil.Process(popen.pid)
    rows = []
    try:
        wait_healthy(admin)
        for round_ in range(1, args.rounds + 1):
            for dashboards in (0, args.dashboards):
                viewers = [Viewer(admin) for _ in range(dashboards)]
                for viewer in viewers:
                    viewer.start()
                cpu_before = sum(supervisor.cpu_times()[:2])
                argv = [wrk, "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency"]
                out = subprocess.run([*argv, f"http://127.0.0.1:{port}/hello"], capture_output=True, text=True)
                cpu = sum(supervisor.cpu_times()[:2]) - cpu_before
                received = sum(viewer.received for viewer in viewers)
                for viewer in viewers:
                    viewer.close()
                summary = parse(out.stdout)
                rows.append((round_, dashboards, summary, cpu, received))
    finally:
        stop_tree(popen, supervisor, 30)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"wsup -i {args.workers}, wrk -t2 -c{args.connections} -d{args.seconds}s /hello; load average {load}")
    print("| round | dashboards | requests/s | p50 ms | p99 ms | errors | supervisor CPU s | events bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for round_, dashboards, s, cpu, received in rows:
        errors = s.connect_errors + s.read_errors + s.write_errors + s.timeouts + s.non_2xx
        print(
            f"| {round_} | {dashboards} | {s.requests_per_s:,.0f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | {errors} |"
            f" {cpu:.2f} | {received:,} |"
        )


if __name__ == "__main__":
    main()
