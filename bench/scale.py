"""Many idle WebSockets on 4 workers, side by side: wsup against ``uvicorn --workers 4``, then a wsup reload at scale.

For each server: start it, measure the process tree's PSS, connect ``--clients`` WebSockets (default 50,000) from
several client processes at once (``bench/scale_clients.py``, each from its own 127.0.0.x source address, at most
``--per-process`` each: a process here may hold 20,000 file descriptors), and report failed connects, the spread
over workers (max/min), the tree's PSS per connection and the connection rate (clients / seconds until every one
was greeted). The clients reconnect when closed, so on wsup the benchmark then runs ``wsup reload`` and reports its
duration, the time until every client is connected again, disconnects per client and their close codes.

    python bench/scale.py                       # 50,000, both servers, reload on wsup
    python bench/scale.py --clients 5000 --servers wsup

Results go to stdout as markdown (and ``--json``); docs/BENCHMARKS.md's scale section is written from them by hand,
with the machine's load named.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson
import psutil
from steering_servers import REPO, Server, build_specs

SETTLE_TIMEOUT_S = 300.0
REPORT_TIMEOUT_S = 120.0


class ClientProcess:
    """One ``scale_clients.py`` process and the JSON lines it prints."""

    def __init__(self, port: int, count: int, source: str, parallel: int) -> None:
        command = [sys.executable, str(REPO / "bench" / "scale_clients.py"), "--port", str(port)]
        command += ["--count", str(count), "--source", source, "--parallel", str(parallel), "--reconnect"]
        self.popen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines: collections.deque[dict[str, Any]] = collections.deque()
        self._arrived = threading.Condition()
        threading.Thread(target=self._read, args=(self.popen.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        for line in stream:
            with self._arrived:
                self.lines.append(orjson.loads(line))
                self._arrived.notify_all()

    def next_line(self, timeout_s: float) -> dict[str, Any]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: bool(self.lines), timeout_s):
                raise TimeoutError(f"client process {self.popen.pid} printed nothing in {timeout_s:g}s")
            return self.lines.popleft()

    def report(self) -> dict[str, Any]:
        assert self.popen.stdin is not None
        self.popen.stdin.write(b"report\n")
        self.popen.stdin.flush()
        # Generous: during a reload's reconnect storm a client process is busy with thousands of handshakes.
        return self.next_line(REPORT_TIMEOUT_S)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.popen.stdin is not None
            self.popen.stdin.close()
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def tree_pss(server: Server) -> int:
    assert server.master is not None
    total = 0
    for proc in [server.master, *server.master.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_full_info().pss
    return total


def merged(reports: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: collections.Counter[str] = collections.Counter()
    for report in reports:
        out.update({str(k): int(v) for k, v in report[key].items()})
    return dict(out)


def spread(per_pid: dict[str, int], workers: set[int]) -> float:
    counts: list[int] = sorted(per_pid.get(str(pid), 0) for pid in workers)
    return counts[-1] / counts[0] if counts and counts[0] else float("inf")


def run_server(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    workers = server.wait_ready()
    time.sleep(1.0)  # let the workers finish their first reports and settle after import
    pss_before = tree_pss(server)
    sizes = [args.per_process] * (args.clients // args.per_process)
    if args.clients % args.per_process:
        sizes.append(args.clients % args.per_process)
    started = time.monotonic()
    clients = [ClientProcess(server.port, n, f"127.0.0.{20 + i}", args.parallel) for i, n in enumerate(sizes)]
    try:
        connected = [client.next_line(SETTLE_TIMEOUT_S) for client in clients]
        seconds = time.monotonic() - started
        time.sleep(1.0)
        pss_after = tree_pss(server)
        per_pid = merged(connected, "per_pid")
        result: dict[str, Any] = {
            "clients": args.clients,
            "client_processes": len(clients),
            "connected": sum(r["live"] for r in connected),
            "failed": sum(sum(r["errors"].values()) for r in connected),
            "errors": merged(connected, "errors"),
            "seconds": round(seconds, 2),
            "rate": round(args.clients / seconds),
            "per_worker": sorted((per_pid.get(str(pid), 0) for pid in workers), reverse=True),
            "spread": round(spread(per_pid, workers), 3),
            "pss_before_mib": round(pss_before / 2**20, 1),
            "pss_after_mib": round(pss_after / 2**20, 1),
            "kib_per_connection": round((pss_after - pss_before) / args.clients / 1024, 2),
        }
        print(orjson.dumps(result).decode(), file=sys.stderr, flush=True)  # kept even if the reload fails
        if server.spec.wsup_name is not None and not args.no_reload:
            result["reload"] = reload_at_scale(server, clients, args.clients)
        return result
    finally:
        for client in clients:
            client.stop()


def reload_at_scale(server: Server, clients: list[ClientProcess], count: int) -> dict[str, Any]:
    env = {**os.environ, **server.spec.env}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "bin/wsup", "reload", "--name", str(server.spec.wsup_name)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SETTLE_TIMEOUT_S * 2,
    )
    reload_s = time.monotonic() - started
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    back_s = None
    while time.monotonic() < deadline:
        reports = [client.report() for client in clients]
        if sum(r["live"] for r in reports) == count:
            back_s = time.monotonic() - started
            break
        time.sleep(0.5)
    time.sleep(2.0)  # late closes would show here
    reports = [client.report() for client in clients]
    disconnects = merged(reports, "disconnects")
    total_closes = sum(int(k) * v for k, v in disconnects.items())
    status = server.status() or {}
    return {
        "exit_code": done.returncode,
        "output": (done.stdout + done.stderr).strip()[-400:],
        "reload_s": round(reload_s, 1),
        "all_back_s": round(back_s, 1) if back_s is not None else None,
        "disconnects_per_client": round(total_closes / count, 4),
        "disconnects": disconnects,
        "close_codes": merged(reports, "closes"),
        "connect_errors": merged(reports, "errors"),
        "spread_after": round(spread(merged(reports, "per_pid"), server.worker_pids()), 3),
        "replacements": (status.get("totals") or {}).get("replacements"),
    }


def markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| | connected / clients | failed | per worker | max/min | connect time (rate/s) | tree PSS before → after"
        " | KiB per WebSocket |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| **{name}** | {r['connected']:,} / {r['clients']:,} | {r['failed']} | "
            f"{', '.join(f'{n:,}' for n in r['per_worker'])} | {r['spread']:.3f} | {r['seconds']} s ({r['rate']:,}) |"
            f" {r['pss_before_mib']} → {r['pss_after_mib']} MiB | {r['kib_per_connection']} |"
        )
    for name, r in results.items():
        if "reload" in r:
            rl = r["reload"]
            lines.append("")
            lines.append(
                f"{name} reload with {r['clients']:,} WebSockets: exit {rl['exit_code']}, {rl['reload_s']} s; all back"
                f" after {rl['all_back_s']} s; {rl['disconnects_per_client']} disconnects per client"
                f" ({rl['disconnects']}); close codes {rl['close_codes']}; connect errors {rl['connect_errors']};"
                f" max/min after {rl['spread_after']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50_000)
    parser.add_argument("--per-process", type=int, default=12_500, help="clients per client process (<= 19,000)")
    parser.add_argument("--parallel", type=int, default=100, help="handshakes in flight per client process")
    parser.add_argument("--servers", default="uvicorn,wsup", help="comma-separated: uvicorn, wsup")
    parser.add_argument("--no-reload", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    run_dir = f"/tmp/wsup-bench-scale-{os.getpid()}"
    specs = build_specs("app:asgi", 4, run_dir, "scale")
    log_dir = Path(run_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    results: dict[str, dict[str, Any]] = {}
    for name in args.servers.split(","):
        with Server(specs[name], 4, log_dir) as server:
            print(f"{name}: {args.clients:,} WebSockets ...", file=sys.stderr, flush=True)
            results[name] = run_server(server, args)
            print(orjson.dumps(results[name]).decode(), file=sys.stderr, flush=True)
    machine = f"{os.cpu_count()} cores, Linux {platform.release()}, load {os.getloadavg()}"
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine}\n")
    print(markdown(results))
    if args.json:
        args.json.write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
