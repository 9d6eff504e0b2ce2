"""What the manager process costs: wsup's supervisor against uvicorn's ``--workers`` parent and gunicorn's arbiter,
idle and under load, with 2 and 8 workers, side by side in one run (issue 11, "no throughput tax").

The manager shares the cores with the workers, so every millisecond it uses a second is taken from serving. wsup's
supervisor does more than the others' (it reads every worker's reports, steers each new connection, keeps the
status), so it cannot cost nothing; this measures what it costs and how that grows with the workers.

Usage, from the repository root::

    .venv/bin/python bench/supervisor_cost.py [--workers 2,8] [--rounds 2] [--idle 20] [--load 8] [--write]
    # beside an earlier wsup: a checkout of it (git worktree add /tmp/wsup-old REV), shown as "wsup REV"
    .venv/bin/python bench/supervisor_cost.py --baseline /tmp/wsup-old --write

For each round, worker count and server (order rotating): start it, warm it up (2 s of ``Connection: close``
load), then read the manager's CPU time (user + system, from /proc) over ``--idle`` seconds with nothing to do,
over ``--load`` seconds of ``wrk -t1 -c64`` keep-alive, and over as many of ``Connection: close`` (a new
connection per request). Reported: the median over rounds of CPU ms per second, and µs per request under load.
``--write`` puts the table in docs/BENCHMARKS.md between ``<!-- supervisor-cost:start -->`` and its end marker.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from doc_sections import replace_section
from throughput_servers import REPO, RunningServer, ServerSpec, build_specs
from throughput_system import cpu_model, wsup_revision
from throughput_wrk import run_wrk, wrk_argv
from wrk_output import find_wrk

START, END = "<!-- supervisor-cost:start -->", "<!-- supervisor-cost:end -->"
SERVERS = ("wsup", "uvicorn", "gunicorn")
MANAGER = {"wsup": "supervisor", "uvicorn": "`--workers` parent", "gunicorn": "arbiter"}
WARMUP_S = 2.0
SETTLE_S = 2.0  # after the warm-up: its connections are closed and the workers' reports back to heartbeats


@dataclass(frozen=True, slots=True)
class Sample:
    server: str
    workers: int
    idle_ms_per_s: float
    keep_ms_per_s: float
    keep_us_per_request: float
    close_ms_per_s: float
    close_us_per_request: float
    worker_idle_ms_per_s: float  # each worker's own idle CPU, the mean of the workers


def _manager_cpu_s(server: RunningServer) -> float:
    assert server.master is not None
    times = server.master.cpu_times()
    return float(times.user + times.system)


def _spec(server_name: str, workers: int, args: argparse.Namespace, log_dir: Path) -> ServerSpec:
    if server_name != "baseline":
        return build_specs(workers, str(log_dir))[server_name]
    wsup = build_specs(workers, str(log_dir))["wsup"]
    # The same command with the other checkout's bin/wsup: it runs that checkout's supervisor and workers.
    argv = tuple(str(args.baseline / "bin" / "wsup") if arg == "bin/wsup" else arg for arg in wsup.argv)
    return dataclasses.replace(wsup, name="baseline", argv=argv)


def measure(server_name: str, workers: int, args: argparse.Namespace, wrk: str, log_dir: Path) -> Sample:
    spec = _spec(server_name, workers, args, log_dir)
    with RunningServer(spec, workers, log_dir) as server:
        server.wait_ready(60.0)
        run_wrk(wrk_argv(wrk, server.url, threads=1, connections=64, duration_s=WARMUP_S, close=True), WARMUP_S)
        time.sleep(SETTLE_S)  # a measured pause, not a wait for a condition: nothing to wait for
        assert server.master is not None  # the manager is what this measures
        idle_from = server.cpu()
        time.sleep(args.idle)
        idle_cpu = server.cpu() - idle_from
        idle = idle_cpu.master / args.idle
        worker_idle = sum(idle_cpu.workers) / max(1, len(idle_cpu.workers)) / args.idle
        loaded: dict[bool, tuple[float, float]] = {}
        for close in (False, True):
            before = _manager_cpu_s(server)
            started = time.monotonic()
            result = run_wrk(
                wrk_argv(wrk, server.url, threads=1, connections=64, duration_s=args.load, close=close), args.load
            )
            used, elapsed = _manager_cpu_s(server) - before, time.monotonic() - started
            if result.socket_errors or result.non_2xx or not result.requests:
                raise RuntimeError(f"{server_name}: {result.socket_errors} socket errors, {result.non_2xx} non-2xx")
            loaded[close] = (used / elapsed * 1000, used / result.requests * 1e6)
        server.check_alive()
    return Sample(server_name, workers, idle * 1000, *loaded[False], *loaded[True], worker_idle * 1000)


def render(samples: list[Sample], args: argparse.Namespace) -> str:
    groups: dict[tuple[int, str], list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.workers, sample.server].append(sample)

    names = {**MANAGER, "baseline": "supervisor"}
    labels = {"baseline": f"wsup {args.baseline_revision}"}

    def median(workers: int, server: str, field: str) -> float:
        return float(statistics.median(getattr(s, field) for s in groups[workers, server]))

    command_options = f" --baseline {args.baseline}" if args.baseline is not None else ""
    command_options += f" --rounds {args.rounds}" if args.rounds != 2 else ""
    command_options += " --write"
    lines = [
        "## What the manager process costs: supervisor, `--workers` parent, arbiter (issue 11)",
        "",
        f"Measured {datetime.date.today()} on {cpu_model()} (2 cores, shared), wsup {wsup_revision(REPO)}, "
        f"{args.rounds} rounds (servers interleaved; medians shown). Manager CPU (user + system) over {args.idle:g} s "
        f"idle, then {args.load:g} s of `wrk -t1 -c64` keep-alive and {args.load:g} s of `Connection: close` on "
        f"`/hello`; the last column is each worker's own CPU in the idle window. Command: "
        f"`.venv/bin/python bench/supervisor_cost.py{command_options}`.",
        "",
        "| workers | server (manager) | idle, ms/s | keep-alive, ms/s | µs/request | close, ms/s | µs/request "
        "| each worker idle, ms/s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for workers in args.workers:
        for server in args.servers:
            if not groups[workers, server]:
                continue
            cells = [f"{median(workers, server, f):.1f}" for f in ("idle_ms_per_s", "keep_ms_per_s")]
            cells.append(f"{median(workers, server, 'keep_us_per_request'):.2f}")
            cells.append(f"{median(workers, server, 'close_ms_per_s'):.1f}")
            cells.append(f"{median(workers, server, 'close_us_per_request'):.2f}")
            cells.append(f"{median(workers, server, 'worker_idle_ms_per_s'):.1f}")
            label = labels.get(server, server)
            lines.append(f"| {workers} | {label} ({names[server]}) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "1 ms/s is 0.1% of one core. CPU time is counted in 10 ms clock ticks: 0.0 means under one tick in the "
        "window. Per round: "
        + "; ".join(
            f"{labels.get(s.server, s.server)} -i {s.workers}: idle {s.idle_ms_per_s:.1f}, "
            f"close {s.close_us_per_request:.2f} µs"
            for s in samples
        )
        + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", default="2,8", type=lambda text: [int(n) for n in text.split(",")])
    parser.add_argument("--servers", default=",".join(SERVERS), type=lambda text: text.split(","))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measurement")
    parser.add_argument("--load", type=float, default=8.0, help="seconds of each load")
    parser.add_argument("--write", action="store_true", help="write the section of docs/BENCHMARKS.md")
    parser.add_argument("--baseline", type=Path, help="an earlier wsup checkout, measured beside the others")
    args = parser.parse_args(argv)
    args.baseline_revision = ""
    if args.baseline is not None:
        if not (args.baseline / "bin" / "wsup").is_file():
            parser.error(f"--baseline {args.baseline}: no bin/wsup there")
        args.servers = ["baseline", *args.servers]
        args.baseline_revision = wsup_revision(args.baseline)
    unknown = set(args.servers) - {*SERVERS, "baseline"}
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))} (known: {', '.join(SERVERS)})")
    wrk = find_wrk()
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="wsup-bench-") as tmp:
        for round_index in range(args.rounds):
            for workers in args.workers:
                order = (
                    args.servers[round_index % len(args.servers) :] + args.servers[: round_index % len(args.servers)]
                )
                for server in order:
                    sample = measure(server, workers, args, wrk, Path(tmp))
                    samples.append(sample)
                    print(
                        f"round {round_index + 1} {server} -i {workers}: idle {sample.idle_ms_per_s:.1f} ms/s, "
                        f"keep-alive {sample.keep_ms_per_s:.1f} ms/s ({sample.keep_us_per_request:.2f} µs/req), "
                        f"close {sample.close_ms_per_s:.1f} ms/s ({sample.close_us_per_request:.2f} µs/req)",
                        flush=True,
                    )
    section = render(samples, args)
    print(section)
    if args.write:
        replace_section(REPO / "docs" / "BENCHMARKS.md", START, END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
