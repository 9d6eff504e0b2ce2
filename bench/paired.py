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
from throughput_results import MODES, LoadRun, Settings, load_run_from
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
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--json", type=Path, help="write every run, raw, to this JSON file")
    parser.add_argument("--from-json", type=Path, help="no runs: report those a --json file holds")
    return parser.parse_args(argv)


def quartiles(values: list[float]) -> str:
    low, median, high = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return f"{median:.3f} ({low:.3f}-{high:.3f})"


# A run in which a worker used less than this share of the busiest one's CPU had the client's pool mostly on
# one worker: with keep-alive, uvicorn's shared accept queue does that in some runs, and it changes the rate more
# than the server's own cost does, so the "both spread" columns compare only the cycles in which neither did.
SPREAD_MIN_SHARE = 0.5


def report(runs: dict[str, dict[str, list[LoadRun]]], servers: list[str], modes: list[str]) -> str:
    """Per mode and server: the median (and quartiles) of the per-cycle ratios to uvicorn, over all cycles and over
    the cycles in which both servers spread the load over their workers."""
    lines = [
        "| mode | server | req/s, median of runs | req/s ratio to uvicorn: median (quartiles) of cycles "
        "| server CPU per request, ratio: median (quartiles) | runs not spread (a worker under half the busiest's CPU) "
        "| both spread: cycles, req/s ratio, CPU per request ratio | others, cores (max) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in modes:
        baseline = runs[mode]["uvicorn"]
        for server in servers:
            pairs = list(zip(runs[mode][server], baseline, strict=True))
            rate = [run.wrk.requests_per_s / base.wrk.requests_per_s for run, base in pairs]
            cpu = [_cpu_per_request(run) / _cpu_per_request(base) for run, base in pairs]
            spread = [i for i, (run, base) in enumerate(pairs) if _spread(run) and _spread(base)]
            both = (
                f"{len(spread)}, {statistics.median(rate[i] for i in spread):.3f}, "
                f"{statistics.median(cpu[i] for i in spread):.3f}"
                if spread
                else "0"
            )
            lumped = sum(not _spread(run) for run, _ in pairs)
            lines.append(
                f"| {mode} | {server} | {statistics.median(run.wrk.requests_per_s for run, _ in pairs):,.0f} "
                f"| {quartiles(rate)} | {quartiles(cpu)} | {lumped} of {len(pairs)} | {both} "
                f"| {max(run.other_cores for run, _ in pairs):.2f} |"
            )
    return "\n".join(lines)


def _spread(run: LoadRun) -> bool:
    busiest = max(run.cpu.workers, default=0.0)
    return busiest > 0 and min(run.cpu.workers) >= SPREAD_MIN_SHARE * busiest


def _raw(runs: dict[str, list[LoadRun]]) -> dict[str, list[dict[str, object]]]:
    return {name: [dataclasses.asdict(run) for run in own] for name, own in runs.items()}


def _cpu_per_request(run: LoadRun) -> float:
    return run.cpu.total / max(1, run.wrk.requests)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    if "uvicorn" not in servers:
        raise SystemExit("bench: --servers must include uvicorn, the baseline of every ratio")
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not modes or set(modes) - set(MODES):
        raise SystemExit(f"bench: --modes takes {', '.join(MODES)}")
    if args.from_json:
        saved = orjson.loads(args.from_json.read_bytes())
        runs = {
            mode: {name: [load_run_from(run) for run in own] for name, own in by.items()} for mode, by in saved.items()
        }
        saved_servers = list(next(iter(runs.values()), {}))
        if "uvicorn" not in saved_servers:
            raise SystemExit(f"bench: {args.from_json} holds no uvicorn runs, the baseline of every ratio")
        print(report(runs, saved_servers, list(runs)))
        return 0
    wrk = find_wrk()
    settings = Settings(
        workers=args.workers, threads=1, connections=args.connections, duration_s=args.duration, warmup_s=3.0,
        rounds=args.cycles, servers=tuple(servers), quick=False, quiet_cores=0.25, quiet_wait_s=0.0, min_quiet=0,
        budget_s=0.0,
    )  # fmt: skip
    runs: dict[str, dict[str, list[LoadRun]]] = {mode: defaultdict(list) for mode in modes}
    started_at, load_before = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), loadavg()
    with tempfile.TemporaryDirectory(prefix="wsup-paired-", dir="/tmp") as tmp, contextlib.ExitStack() as stack:
        specs = build_specs(args.workers, tmp)
        running = {name: stack.enter_context(RunningServer(specs[name], args.workers, Path(tmp))) for name in servers}
        for server in running.values():
            server.wait_ready(READY_TIMEOUT_S)
            warm_up(server, wrk, settings)
        for cycle in range(args.cycles):
            order = servers[cycle % len(servers) :] + servers[: cycle % len(servers)]
            for mode in modes:
                for name in order:
                    run = load_run(running[name], wrk, settings, close=mode == "close", duration_s=args.duration)
                    runs[mode][name].append(run)
            log(f"cycle {cycle + 1}/{args.cycles}: " + ", ".join(
                f"{name} {runs[modes[-1]][name][-1].wrk.requests_per_s:,.0f}" for name in servers
            ) + f" req/s ({modes[-1]})")  # fmt: skip
        for server in running.values():
            server.check_alive()
    print(
        f"- {started_at}; {cpu_model()}; wsup at `{wsup_revision(REPO)}`; load average before "
        f"{'/'.join(map(str, load_before))}, after {'/'.join(map(str, loadavg()))}.\n"
        f"- `bench/paired.py {' '.join(sys.argv[1:] if argv is None else argv)}`: {args.cycles} cycles of "
        f"{args.duration:g} s per server and mode, wrk -t1 -c{args.connections}, {args.workers} workers each.\n"
    )
    print(report(runs, servers, modes))
    if args.json:
        args.json.write_bytes(orjson.dumps({mode: _raw(by) for mode, by in runs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
