"""Worker recycling under load (issue 15): wsup --max-requests against uvicorn --limit-max-requests and gunicorn
--max-requests, 4 workers each, the same app (``app:asgi``) and the same load.

Run from the repository root::

    .venv/bin/python bench/recycle.py                 # 60 s per server
    .venv/bin/python bench/recycle.py --seconds 20    # shorter, for a loaded machine or development

For each server, one after the other: ``wrk -t2 -c64`` keep-alive on /hello and 200 auto-reconnecting WebSocket
clients on /ws for the whole run, with every worker limited to 2000 requests. Reported: failed requests (wrk's
socket errors + non-2xx), workers retired (initial workers gone by the end, and every worker pid seen), WebSocket
closes per connection whose worker was retired (1.00 = each such client disconnected exactly once), the close
codes, and connect errors. Results go to docs/BENCHMARKS.md between ``<!-- recycle:start -->`` and
``<!-- recycle:end -->``. Every process started here is stopped, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvloop
from reload_report import machine, now_utc
from reload_servers import REPO, Server, ServerSpec
from reload_wrk import WrkRun, wrk_argv
from reload_ws import Client
from server_process import gunicorn_worker_class
from throughput_system import loadavg
from wrk_output import find_wrk

WORKERS = 4
MAX_REQUESTS = 2000
WS_CLIENTS = 200
START, END = "<!-- recycle:start -->", "<!-- recycle:end -->"


def specs(run_dir: str) -> dict[str, ServerSpec]:
    py, limit = sys.executable, str(MAX_REQUESTS)
    return {
        "wsup": ServerSpec(
            "wsup",
            (py, "bin/wsup", "start", "app:asgi", "-i", str(WORKERS), "--port", "{port}", "--name", "bench-reload")
            + ("--no-access-log", "--log-level", "warning", "--max-requests", limit),
            "supervisor.worker",
            {"WSUP_RUN_DIR": run_dir},
        ),
        "uvicorn": ServerSpec(
            "uvicorn",
            (py, "-m", "uvicorn", "app:asgi", "--workers", str(WORKERS), "--port", "{port}", "--no-access-log")
            + ("--loop", "uvloop", "--http", "httptools", "--log-level", "info", "--limit-max-requests", limit),
            "spawn_main",
        ),
        "gunicorn": ServerSpec(
            "gunicorn",
            (py, "-m", "gunicorn", "app:asgi", "-k", gunicorn_worker_class(), "-w", str(WORKERS))
            + ("-b", "127.0.0.1:{port}", "--log-level", "info", "--max-requests", limit),
            None,
        ),
    }


@dataclass
class Result:
    server: str
    command: str
    seconds: float
    requests: int
    failed: int
    initial_retired: int  # of the WORKERS initial workers, how many were gone by the end
    workers_seen: int  # distinct worker pids seen over the run (initial ones included)
    ws_connections: int
    ws_on_retired: int  # connections whose worker was gone by the end
    ws_closes: int
    close_codes: dict[str, int]
    connect_errors: int
    recycled_by_wsup: dict[str, int] | None

    @property
    def closes_per_retired(self) -> float:
        return (self.ws_closes + self.connect_errors) / self.ws_on_retired if self.ws_on_retired else 0.0


class Clients:
    """The WebSocket clients, on their own event loop in a thread, for as long as the server runs."""

    def __init__(self, url: str, count: int) -> None:
        self.clients = [Client(url) for _ in range(count)]
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._started = threading.Event()

    def _main(self) -> None:
        async def run() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._started.set()
            await asyncio.gather(*(c.run(self._stop) for c in self.clients), return_exceptions=True)

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run())

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def connected(self) -> int:
        return sum(c.pid is not None for c in self.clients)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def _seen_workers(server: Server, seen: set[int], stop: threading.Event) -> None:
    while not stop.is_set():
        seen |= server.worker_pids()
        stop.wait(0.2)


def run_one(spec: ServerSpec, seconds: float, log_dir: Path, wrk: str) -> Result:
    with Server(spec, WORKERS, log_dir) as server:
        server.wait_ready()
        initial = server.worker_pids()
        clients = Clients(server.url("/ws", "ws"), WS_CLIENTS)
        clients.start()
        deadline = time.monotonic() + 60
        while clients.connected() < WS_CLIENTS and time.monotonic() < deadline:
            time.sleep(0.1)
        for client in clients.clients:  # count only what happens under load
            client.closes.clear()
            client.errors.clear()
            client.pids = [client.pid] if client.pid is not None else []
        seen: set[int] = set(initial)
        stop_watch = threading.Event()
        watcher = threading.Thread(target=_seen_workers, args=(server, seen, stop_watch), daemon=True)
        watcher.start()
        try:
            with WrkRun(wrk_argv(wrk, server.url("/hello"), close=False)) as run:
                time.sleep(seconds)
                summary = run.finish()
        finally:
            clients.stop()
            stop_watch.set()
            watcher.join(5)
        final = server.worker_pids()
        status = server.wsup_status() if spec.name == "wsup" else None
    retired = seen - final
    pids = [pid for c in clients.clients for pid in c.pids]
    codes = collections.Counter(str(code) for c in clients.clients for code in c.closes)
    return Result(
        server=spec.name,
        command=spec.display(),
        seconds=round(summary.seconds, 1),
        requests=summary.requests,
        failed=summary.failed,
        initial_retired=len(initial - final),
        workers_seen=len(seen),
        ws_connections=len(pids),
        ws_on_retired=sum(pid in retired for pid in pids),
        ws_closes=sum(codes.values()),
        close_codes=dict(codes.most_common()),
        connect_errors=sum(len(c.errors) for c in clients.clients),
        recycled_by_wsup=(status or {}).get("totals", {}).get("replacements") if status is not None else None,
    )


def render(results: list[Result], seconds: float) -> str:
    m = machine(REPO)
    lines = [
        "## Recycling under load (issue 15)",
        "",
        f"- Run {now_utc()} on {m['nproc']} cores ({m['cpu']}), Linux {m['kernel']}, wsup {m['wsup']};"
        f" load average at the end {loadavg()}. **A shared, loaded machine**: other engineers' jobs ran meanwhile.",
        f"- Load for {seconds:g} s per server: `wrk -t2 -c64` keep-alive on /hello and {WS_CLIENTS} auto-reconnecting"
        f" WebSocket clients on /ws; {WORKERS} workers, each limited to {MAX_REQUESTS} requests.",
        "- *retired*: initial workers gone by the end; *closes per retired connection*: (WebSocket closes + connect"
        " errors) / connections whose worker was gone by the end (1.00: each disconnected exactly once).",
        "",
        "| | requests | failed | initial workers retired | worker pids seen | WebSocket closes per retired"
        " connection | close codes | connect errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        codes = ", ".join(f"{code}: {n}" for code, n in r.close_codes.items()) or "-"
        lines.append(
            f"| **{r.server}** | {r.requests:,} | {r.failed} | {r.initial_retired}/{WORKERS} | {r.workers_seen}"
            f" | {r.closes_per_retired:.2f} ({r.ws_closes + r.connect_errors}/{r.ws_on_retired}) | {codes}"
            f" | {r.connect_errors} |"
        )
    lines += ["", "Commands (port shown as 8000):", ""]
    lines += [f"- {r.server}: `{r.command}`" for r in results]
    wsup = next((r for r in results if r.recycled_by_wsup is not None), None)
    if wsup is not None:
        lines += ["", f"wsup's own count of replacements by reason: `{wsup.recycled_by_wsup}`."]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{START}\n{section.rstrip()}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.recycle.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every `with`: servers and wrk are stopped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration per server (default 60)")
    parser.add_argument("--servers", default="wsup,uvicorn,gunicorn", help="comma-separated subset")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    wrk = find_wrk()
    with tempfile.TemporaryDirectory(prefix="wsup-bench-", dir="/tmp") as run_dir:
        all_specs = specs(run_dir)
        results = []
        for name in args.servers.split(","):
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {args.seconds:g} s under load", file=sys.stderr)
            results.append(run_one(all_specs[name], args.seconds, Path(run_dir), wrk))
            print(results[-1], file=sys.stderr)
    section = render(results, args.seconds)
    if args.no_write:
        print(section)
    else:
        write_section(REPO / "docs" / "BENCHMARKS.md", section)
        print(section)


if __name__ == "__main__":
    main()
