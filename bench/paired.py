"""Throughput ratios on a noisy machine: every server running at once, short load runs back to back (issue 11).

``bench/throughput.py`` starts each server fresh and loads it for 10 s, minutes apart from the others: on this
project's shared 2-core machines the same server's rate moves by ±20% from one minute to the next (host
neighbours, frequency), so ratios between servers carry that noise, whatever the number of rounds. Here every
server is started once and warmed up, then loaded in turn for a few seconds, cycle after cycle, the order rotating:
the two runs of a pair are seconds apart, the machine's slow drift cancels in their ratio, and the median of many
per-cycle ratios is what is reported. The servers not under load meanwhile sit idle (wsup's supervisor takes
~0.5% of a core idle, uvicorn's parent less; both are counted as other processes, not as the measured server).

Usage: ``.venv/bin/python bench/paired.py [--servers wsup,uvicorn] [--cycles 20] [--duration 3] [--json FILE]``.
Needs ``wrk`` (``apt-get install -y wrk``); the server names are bench/throughput.py's (``WSUP_BENCH_BASELINE``
adds ``wsup-baseline``, another checkout of wsup).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import orjson
from throughput import READY_TIMEOUT_S, load_run, log, warm_up
from throughput_results import MODES, LoadRun, Settings
from throughput_servers import REPO, RunningServer, build_specs
from throughput_system import cpu_model, loadavg, wsup_revision
from wrk_output import find_wrk


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="wsup,uvicorn", help="comma-separated; uvicorn is the baseline")
    parser.add_argument("--cycles", type=int, default=20, help="load runs per server and mode (default 20)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load run (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per server (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--json", type=Path, help="write every run, raw, to this JSON file")
    return parser.parse_args(argv)


def quartiles(values: list[float]) -> str:
    low, median, high = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return f"{median:.3f} ({low:.3f}-{high:.3f})"


def report(runs: dict[str, dict[str, list[LoadRun]]], servers: list[str]) -> str:
    """Per mode and server: the median (and quartiles) of the per-cycle ratios to uvicorn."""
    lines = [
        "| mode | server | req/s, median of runs | req/s ratio to uvicorn: median (quartiles) of cycles "
        "| server CPU per request, ratio: median (quartiles) | others, cores (max) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        baseline = runs[mode]["uvicorn"]
        for server in servers:
            own = runs[mode][server]
            rate = [run.wrk.requests_per_s / base.wrk.requests_per_s for run, base in zip(own, baseline, strict=True)]
            cpu = [_cpu_per_request(run) / _cpu_per_request(base) for run, base in zip(own, baseline, strict=True)]
            lines.append(
                f"| {mode} | {server} | {statistics.median(run.wrk.requests_per_s for run in own):,.0f} "
                f"| {quartiles(rate)} | {quartiles(cpu)} | {max(run.other_cores for run in own):.2f} |"
            )
    return "\n".join(lines)


def _raw(runs: dict[str, list[LoadRun]]) -> dict[str, list[dict[str, object]]]:
    return {name: [dataclasses.asdict(run) for run in own] for name, own in runs.items()}


def _cpu_per_request(run: LoadRun) -> float:
    return run.cpu.total / max(1, run.wrk.requests)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    if "uvicorn" not in servers:
        raise SystemExit("bench: --servers must include uvicorn, the baseline of every ratio")
    wrk = find_wrk()
    settings = Settings(
        workers=args.workers, threads=1, connections=args.connections, duration_s=args.duration, warmup_s=3.0,
        rounds=args.cycles, servers=tuple(servers), quick=False, quiet_cores=0.25, quiet_wait_s=0.0, min_quiet=0,
        budget_s=0.0,
    )  # fmt: skip
    runs: dict[str, dict[str, list[LoadRun]]] = {mode: defaultdict(list) for mode in MODES}
    started_at, load_before = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), loadavg()
    with tempfile.TemporaryDirectory(prefix="wsup-paired-", dir="/tmp") as tmp, contextlib.ExitStack() as stack:
        specs = build_specs(args.workers, tmp)
        running = {name: stack.enter_context(RunningServer(specs[name], args.workers, Path(tmp))) for name in servers}
        for server in running.values():
            server.wait_ready(READY_TIMEOUT_S)
            warm_up(server, wrk, settings)
        for cycle in range(args.cycles):
            order = servers[cycle % len(servers) :] + servers[: cycle % len(servers)]
            for mode in MODES:
                for name in order:
                    run = load_run(running[name], wrk, settings, close=mode == "close", duration_s=args.duration)
                    runs[mode][name].append(run)
            log(f"cycle {cycle + 1}/{args.cycles}: " + ", ".join(
                f"{name} {runs['close'][name][-1].wrk.requests_per_s:,.0f}" for name in servers
            ) + " req/s with Connection: close")  # fmt: skip
        for server in running.values():
            server.check_alive()
    print(
        f"- {started_at}; {cpu_model()}; wsup at `{wsup_revision(REPO)}`; load average before "
        f"{'/'.join(map(str, load_before))}, after {'/'.join(map(str, loadavg()))}.\n"
        f"- `bench/paired.py {' '.join(sys.argv[1:] if argv is None else argv)}`: {args.cycles} cycles of "
        f"{args.duration:g} s per server and mode, wrk -t1 -c{args.connections}, {args.workers} workers each.\n"
    )
    print(report(runs, servers))
    if args.json:
        raw = {
            mode: {name: [dataclasses.asdict(run) for run in own] for name, own in by.items()}
            for mode, by in runs.items()
        }
        args.json.write_bytes(orjson.dumps(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
