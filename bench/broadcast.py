"""Broadcast fan-out: 200 WebSocket subscribers of one channel over 4 workers, one publisher, client on the same
machine. For wsup's bus, and side by side (where they can be installed) encode/broadcaster + Redis under
``uvicorn --workers 4`` and Socket.IO 4 + Redis adapter under ``pm2 -i 4`` (issue 5). Results go to the
``broadcast`` section of docs/BENCHMARKS.md.

Usage, from the repository root::

    .venv/bin/python bench/broadcast.py [--quick] [--duration S] [--servers wsup,broadcaster,socketio]

Bench-only requirements (not wsup dependencies): ``redis-server`` (``apt-get install -y redis-server``),
``.venv/bin/pip install broadcaster redis``, and node + npm (the Socket.IO packages and PM2 are installed from the
npm registry into ``~/.cache/wsup-bench/node`` on first use).

For each stack: first, on a fresh server, every subscriber connects at once and what is lost right after is
counted (subscribe races). Then, on another fresh server with subscribers connected one at a time, one client
stops reading while 16 KiB messages flow at 100 msg/s: the server's memory growth and the other clients' losses
show whether one slow consumer costs everyone. Then the publish rate steps up (200, 400, 800... msg/s) until a
step (and its one retry) loses a message, has a p99 latency of 100 ms or more, or the publisher cannot keep the
rate; the figure is the highest step that passed. Each step reports deliveries/s, server CPU time per delivery
(every server-side process, Redis included), p50/p99 latency and how busy the whole machine was.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import multiprocessing
import shlex
import socket
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psutil
from broadcast_client import process_main
from broadcast_report import ServerResult, StallResult, Step, render, write_section
from broadcast_servers import (
    REPO,
    BenchError,
    Running,
    start_broadcaster,
    start_socketio,
    start_wsup,
    versions,
)
from server_process import free_port

RATES = (200, 400, 800, 1200, 1600, 2400, 3200, 4800, 6400)
STALL_RATE = 100
STALL_PAD = 16384
P99_LIMIT_MS = 100.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_busy_s() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


class Clients:
    """The subscriber processes and the publisher process of one stack."""

    def __init__(self, port: int, dialect: str, subscribers: int, processes: int, concurrency: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._children: list[tuple[BaseProcess, Connection]] = []
        sizes = [subscribers // processes + (1 if i < subscribers % processes else 0) for i in range(processes)]
        for role, count in [("sub", size) for size in sizes] + [("pub", 1)]:
            parent, child = context.Pipe()
            proc = context.Process(
                target=process_main, args=(child, port, dialect, role, count, concurrency), daemon=True
            )
            proc.start()
            self._children.append((proc, parent))
        self.pids: list[int] = []
        for _, conn in self._children:
            self.pids += self._reply(conn, 60)[1]
        self.subscribers = subscribers

    @property
    def _subs(self) -> list[Connection]:
        return [conn for _, conn in self._children[:-1]]

    @property
    def _pub(self) -> Connection:
        return self._children[-1][1]

    def _reply(self, conn: Connection, timeout: float) -> Any:
        if not conn.poll(timeout):
            raise BenchError(f"a client process did not answer within {timeout:g}s")
        reply = conn.recv()
        if reply[0] == "error":
            raise BenchError(f"client process failed: {reply[1]}")
        return reply

    def window(self, lo: int, hi: int) -> None:
        for conn in self._subs:
            conn.send(("window", lo, hi))
        for conn in self._subs:
            self._reply(conn, 30)

    def publish(self, lo: int, hi: int, rate: float, pad: int) -> float:
        self._pub.send(("publish", lo, hi, rate, pad))
        return float(self._reply(self._pub, (hi - lo) / rate * 3 + 30)[1])

    def collect(self) -> tuple[list[int], array.array[int], int]:
        counts: list[int] = []
        latencies: array.array[int] = array.array("q")
        closed = 0
        for conn in self._subs:
            conn.send(("collect",))
        for conn in self._subs:
            some, raw, gone = self._reply(conn, 60)
            counts += some
            latencies.frombytes(raw)
            closed += gone
        return counts, latencies, closed

    def cpu_s(self) -> float:
        total = 0.0
        for proc, _ in self._children:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(proc.pid).cpu_times()
                total += times.user + times.system
        return total

    def delivered(self) -> int:
        for conn in self._subs:
            conn.send(("count",))
        return sum(int(self._reply(conn, 30)[1]) for conn in self._subs)

    def close(self) -> None:
        for proc, conn in self._children:
            with contextlib.suppress(OSError, EOFError):
                conn.send(("stop",))
                conn.poll(5)
            proc.join(5)
            if proc.is_alive():
                proc.kill()


def measure(clients: Clients, running: Running, rate: float, duration: float, seq: int, pad: int = 0) -> Step:
    count = max(1, int(rate * duration))
    expected = count * clients.subscribers
    clients.window(seq, seq + count)
    cpu_before, client_before = running.cpu_s(), clients.cpu_s()
    busy_before, started = machine_busy_s(), time.monotonic()
    publish_s = clients.publish(seq, seq + count, rate, pad)
    drain_deadline = time.monotonic() + 3.0  # stragglers: what has not arrived by then counts as lost
    while time.monotonic() < drain_deadline and clients.delivered() < expected:
        time.sleep(0.1)
    wall = time.monotonic() - started
    cpu, busy = running.cpu_s() - cpu_before, machine_busy_s() - busy_before
    client_cpu = clients.cpu_s() - client_before
    counts, latencies, closed = clients.collect()
    ordered = sorted(latencies)

    def percentile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] / 1e6 if ordered else float("inf")

    return Step(
        rate=rate,
        published=count,
        expected=expected,
        delivered=sum(counts),
        publish_s=publish_s,
        planned_s=count / rate,
        p50_ms=percentile(0.50),
        p99_ms=percentile(0.99),
        cpu_s=cpu,
        machine_busy=busy / wall,
        server_cores=cpu / wall,
        client_cores=client_cpu / wall,
        closed=closed,
    )


def settle(running: Running, timeout: float = 30.0) -> None:
    """Wait until the server is idle again (under 0.15 cores for 0.5 s): a previous step may have left a backlog."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = running.cpu_s()
        time.sleep(0.5)
        if (running.cpu_s() - before) / 0.5 < 0.15:
            return
    log(f"{running.name}: still busy after {timeout:g}s; measuring anyway")


def stalled_socket(port: int, dialect: str) -> socket.socket:
    """A subscriber that reads its handshake and ready message, then never reads again (4 KiB receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    path = "/socket.io/?EIO=4&transport=websocket" if dialect == "socketio" else "/sub"
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    data = b""
    if dialect == "socketio":
        while b"0{" not in data:
            data += sock.recv(4096)
        sock.sendall(b"\x81\x82\x00\x00\x00\x0040")  # "40": connect to the main namespace (masked, zero key)
    marker = b'42["ready"' if dialect == "socketio" else b"ready "
    while marker not in data:
        data += sock.recv(4096)
    return sock


def start_stack(name: str, args: argparse.Namespace, log_file: Path, *, workaround: bool = True) -> Running:
    port = free_port()
    log(f"{name}: starting on port {port}")
    if name == "wsup":
        return start_wsup(port, args.workers, log_file, shlex.split(args.wsup_args))
    if name == "broadcaster":
        return start_broadcaster(port, args.workers, free_port(), log_file, workaround=workaround)
    return start_socketio(port, args.workers, free_port(), log_file)


def subscribe_race(name: str, args: argparse.Namespace, workdir: Path) -> Step:
    """A fresh server; every subscriber connects at once (50 handshakes in flight per client process), as after a
    deploy; 1 s later, 1 s of messages at 100 msg/s. Whatever is lost was lost to subscribing. broadcaster runs
    as its documentation shows it, without the benchmark's workaround."""
    running = start_stack(name, args, workdir / f"{name}-race.log", workaround=False)
    clients: Clients | None = None
    try:
        dialect = "socketio" if name == "socketio" else "plain"
        clients = Clients(running.port, dialect, args.subscribers, args.client_processes, concurrency=50)
        time.sleep(1.0)
        race = measure(clients, running, 100, 1.0, 0)
        log(f"{name}: concurrent subscribe: {race.lost} of {race.expected} deliveries lost")
        return race
    finally:
        if clients is not None:
            clients.close()
        running.stop()


def run_stack(name: str, args: argparse.Namespace, workdir: Path) -> ServerResult:
    result = ServerResult(name=name)
    race = subscribe_race(name, args, workdir)
    result.race_lost, result.race_expected = race.lost, race.expected
    running = start_stack(name, args, workdir / f"{name}.log")
    port, dialect = running.port, "socketio" if name == "socketio" else "plain"
    clients: Clients | None = None
    try:
        # Subscribers connect one at a time (each subscribed before the next connects), so that a subscribe race
        # does not hide a stack's fan-out.
        clients = Clients(port, dialect, args.subscribers, args.client_processes, concurrency=1)
        result.distribution = sorted(
            (clients.pids.count(pid) for pid in set(clients.pids[: args.subscribers])), reverse=True
        )
        log(f"{name}: {args.subscribers} subscribers connected one by one, per worker {result.distribution}")
        time.sleep(1.0)
        warmup = measure(clients, running, 100, 1.0, 0)
        result.warmup_lost = warmup.lost
        seq = warmup.published
        # One stalled client, first, while the server is healthy (a failed step can leave a peer broken).
        with contextlib.closing(stalled_socket(port, dialect)):
            settle(running)
            rss_before = running.rss()
            step = measure(clients, running, STALL_RATE, args.duration, seq, pad=STALL_PAD)
            seq += step.published
            stall = StallResult(step=step, rss_before=rss_before, rss_after=running.rss(), pad=STALL_PAD)
            if name == "wsup":
                totals: Any = running.wsup_status()["totals"]
                stall.counters = dict(totals["bus"])
            result.stall = stall
            log(f"{name}: stalled client: {stall.summary()}")
        for rate in args.rates:
            settle(running)
            step = measure(clients, running, rate, args.duration, seq)
            seq += step.published
            log(f"{name}: {step.summary()}")
            if not step.ok(P99_LIMIT_MS):
                # The machine is shared: one retry, so that a burst of someone else's load does not end the search.
                result.steps.append(step)
                settle(running)
                step = measure(clients, running, rate, args.duration, seq)
                step.retry = True
                seq += step.published
                log(f"{name}: retry: {step.summary()}")
            result.steps.append(step)
            if not step.ok(P99_LIMIT_MS):
                break
    finally:
        if clients is not None:
            clients.close()
        running.stop()
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s steps: for development, indicative only")
    parser.add_argument("--duration", type=float, help="seconds per rate step (default 10, quick 3)")
    parser.add_argument("--servers", default="wsup,broadcaster,socketio", help="comma-separated subset, in order")
    parser.add_argument("--rates", help="comma-separated publish rates to step through (msg/s)")
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--client-processes", type=int, default=4, help="processes holding the subscribers")
    parser.add_argument("--wsup-args", default="", help="extra `wsup start` options, e.g. '--bus-coalesce-ms 5'")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.rates = [float(r) for r in args.rates.split(",")] if args.rates else list(RATES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: list[ServerResult] = []
    with contextlib.ExitStack() as stack:
        import tempfile

        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsup-bench-bus-")))
        for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
            try:
                results.append(run_stack(name, args, workdir))
            except BenchError as exc:
                log(f"{name}: not measured: {exc}")
                results.append(ServerResult(name=name, error=str(exc)))
    section = render(results, args, versions())
    if args.no_write:
        print(section)
    else:
        write_section(args.output, section)
        log(f"wrote the broadcast section of {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
