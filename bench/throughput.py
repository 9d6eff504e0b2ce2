"""Requests per second and memory of ``wsup start -i 2`` against ``uvicorn --workers 2`` and gunicorn with uvicorn
workers, on the same app, measured side by side in one run and written to docs/BENCHMARKS.md (issue 2).

Usage, from the repository root::

    .venv/bin/python bench/throughput.py [--quick] [--duration S] [--rounds N] [--servers wsup,uvicorn,gunicorn]
    # on a shared machine: keep adding rounds (up to 10 minutes) until each server has 2 undisturbed runs
    .venv/bin/python bench/throughput.py --min-quiet 2 --budget 600 --quiet-wait 20 --json /tmp/throughput.json
    # render the section again from saved samples, measuring nothing
    .venv/bin/python bench/throughput.py --from-json /tmp/throughput.json

Bench-only requirements (not wsup dependencies): ``wrk`` (Debian/Ubuntu: ``apt-get install -y wrk``) and gunicorn
with the ``uvicorn-worker`` package (``.venv/bin/pip install gunicorn uvicorn-worker``); uvicorn 0.54 still ships
``uvicorn.workers.UvicornWorker`` but deprecates it, so it is only the fallback. ``granian`` (a Rust server, for
reference: ``.venv/bin/pip install granian``) is measured when ``--servers`` names it.

The machine is small and shared, so rounds interleave the servers (order rotating), every load run records how much
CPU other processes used meanwhile, and the report separates quiet runs from all runs. ``--servers`` also knows
``wsup-hash`` (wsup with ``--balance hash``), which separates the cost of steering from that of counting and
reporting; ``wsup-no-shared`` (wsup with ``--no-shared-queue``: every connection in a worker's own queue); and
``uvicorn-reuseport`` (uvicorn's workers each on a SO_REUSEPORT socket of its own, wsup's accept-queue layout with
no wsup code: bench/reuseport_uvicorn.py). ``--workers 1`` writes a section of its own.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import orjson
from server_process import gunicorn_worker_class
from throughput_markdown import render, write_section
from throughput_results import MODES, Context, LoadRun, Sample, Settings, from_json, missing_quiet, to_json
from throughput_servers import REPO, RunningServer, ServerError, ServerSpec, build_specs
from throughput_system import CpuStat, Machine, loadavg, package_versions, wait_for_quiet, wsup_revision
from throughput_wrk import run_wrk, wrk_argv
from wrk_output import WrkError, find_wrk, wrk_version

READY_TIMEOUT_S = 60.0
WARMUP_ATTEMPTS = 3
MIN_WORKER_WARMUP_CPU_S = 0.05  # a worker that used less during the warm-up has not served yet


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3s: for development, indicative only")
    parser.add_argument("--duration", type=float, help="seconds per load run (default 10, quick 3)")
    parser.add_argument("--rounds", type=int, help="rounds over all servers (default 5, quick 2)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up load per server start (default 3, quick 1)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per server (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument(
        "--servers",
        default="wsup,uvicorn,gunicorn",
        help="comma-separated, in order, from wsup, wsup-hash (wsup with --balance hash), wsup-no-shared "
        "(wsup with --no-shared-queue), uvicorn, "
        "uvicorn-reuseport (uvicorn on per-worker reuseport sockets), gunicorn, granian; and wsup-baseline "
        "(the wsup checkout named by $WSUP_BENCH_BASELINE)",
    )
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "BENCHMARKS.md", help="markdown file")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    parser.add_argument("--json", type=Path, help="also write every sample, raw, to this JSON file")
    parser.add_argument("--from-json", type=Path, help="measure nothing: render the section from a --json file")
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.25,
        help="a run during which other processes used more cores than this is disturbed (default 0.25)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=0.0, help="before each start, wait up to S seconds for quiet (default 0)"
    )
    parser.add_argument(
        "--min-quiet",
        type=int,
        default=0,
        help="after --rounds, add rounds until every server has N quiet runs of each kind (default 0: no more)",
    )
    parser.add_argument(
        "--budget", type=float, default=900.0, help="add no round after this many seconds in all (default 900)"
    )
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    if "uvicorn" not in servers:
        raise SystemExit("bench: --servers must include uvicorn, the baseline of every ratio")
    return Settings(
        workers=args.workers,
        threads=args.threads,
        connections=args.connections,
        duration_s=args.duration or (3.0 if args.quick else 10.0),
        warmup_s=args.warmup or (1.0 if args.quick else 3.0),
        rounds=args.rounds or (2 if args.quick else 5),
        servers=servers,
        quick=args.quick,
        quiet_cores=args.quiet_cores,
        quiet_wait_s=args.quiet_wait,
        min_quiet=args.min_quiet,
        budget_s=args.budget,
    )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_run(server: RunningServer, wrk: str, settings: Settings, *, close: bool, duration_s: float) -> LoadRun:
    argv = wrk_argv(
        wrk, server.url, threads=settings.threads, connections=settings.connections, duration_s=duration_s, close=close
    )
    cpu_before, stat_before, started = server.cpu(), CpuStat.read(), time.monotonic()
    result = run_wrk(argv, duration_s)
    cpu_after, stat, wall = server.cpu(), CpuStat.read() - stat_before, time.monotonic() - started
    cpu = cpu_after - cpu_before
    other = max(0.0, stat.busy_s - cpu.total - result.cpu_s) / wall
    return LoadRun(wrk=result, cpu=cpu, wall_s=wall, other_cores=other, steal_cores=stat.steal_s / wall)


def warm_up(server: RunningServer, wrk: str, settings: Settings) -> None:
    """Load until every worker has served: a worker still importing the app would halve the figures."""
    for _ in range(WARMUP_ATTEMPTS):
        run = load_run(server, wrk, settings, close=False, duration_s=settings.warmup_s)
        if all(cpu >= MIN_WORKER_WARMUP_CPU_S for cpu in run.cpu.workers):
            return
    raise ServerError(f"{server.spec.name}: a worker did not serve during {WARMUP_ATTEMPTS} warm-ups: {run.cpu}")


def measure(spec: ServerSpec, wrk: str, settings: Settings, round_index: int, log_dir: Path) -> Sample:
    if settings.quiet_wait_s > 0:
        busy = wait_for_quiet(settings.quiet_cores, settings.quiet_wait_s)
        if busy > settings.quiet_cores:
            log(f"  still {busy:.2f} cores busy after waiting {settings.quiet_wait_s:g}s: measuring anyway")
    load_before = loadavg()
    with RunningServer(spec, settings.workers, log_dir) as server:
        server.wait_ready(READY_TIMEOUT_S)
        warm_up(server, wrk, settings)
        memory_warm = server.memory()
        runs = {
            mode: load_run(server, wrk, settings, close=mode == "close", duration_s=settings.duration_s)
            for mode in MODES
        }
        server.check_alive()
        memory_loaded = server.memory()
    stop = server.stop()
    # uvicorn >= 0.29 re-raises the SIGTERM it handled once shut down, so -SIGTERM is a clean exit too.
    if stop.returncode not in (0, -signal.SIGTERM, None) or stop.killed or stop.log_tail:
        log(f"  {spec.name}: exit code {stop.returncode}, killed={stop.killed}, output:\n{stop.log_tail}")
    return Sample(spec.name, round_index, runs, memory_warm, memory_loaded, stop, load_before)


def summary_line(sample: Sample) -> str:
    return ", ".join(
        f"{mode} {run.wrk.requests_per_s:,.0f} req/s (others {run.other_cores:.2f} cores)"
        for mode, run in sample.runs.items()
    )


def run_rounds(specs: list[ServerSpec], wrk: str, settings: Settings, log_dir: Path) -> list[Sample]:
    """Run the minimum rounds, then more while quiet runs are missing and the time budget allows another."""
    samples: list[Sample] = []
    started = time.monotonic()
    index = 0
    while index < settings.rounds or (
        missing_quiet(samples, settings) > 0 and _round_fits(started, index, settings.budget_s)
    ):
        shift = index % len(specs)
        order = specs[shift:] + specs[:shift]
        log(
            f"round {index + 1} (load {'/'.join(map(str, loadavg()))}; quiet runs missing: "
            f"{missing_quiet(samples, settings)})"
        )
        for spec in order:
            sample = measure(spec, wrk, settings, index, log_dir)
            log(f"  {spec.name}: {summary_line(sample)}")
            samples.append(sample)
        index += 1
    return samples


def _round_fits(started: float, rounds_done: int, budget_s: float) -> bool:
    elapsed = time.monotonic() - started
    return elapsed + elapsed / max(1, rounds_done) <= budget_s


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every RunningServer, which stops its process tree


def new_context(specs: list[ServerSpec], wrk: str, settings: Settings, argv: list[str]) -> Context:
    sample_wrk = wrk_argv(
        "wrk",
        "http://127.0.0.1:PORT/hello",
        threads=settings.threads,
        connections=settings.connections,
        duration_s=settings.duration_s,
        close=False,
    )
    ctx = Context(
        machine=Machine.current(),
        versions=package_versions(),
        wrk_version=wrk_version(wrk),
        revision=wsup_revision(REPO),
        commands={s.name: s.display() for s in specs},
        wrk_command=shlex.join(sample_wrk),
        invocation=shlex.join([".venv/bin/python", "bench/throughput.py", *argv]),
        load_start=loadavg(),
    )
    if gunicorn_worker_class().startswith("uvicorn.workers"):
        ctx.notes.append("uvicorn-worker is not installed: gunicorn ran the deprecated uvicorn.workers class.")
    return ctx


def benchmark(settings: Settings, argv: list[str]) -> tuple[list[Sample], Context]:
    """Measure every server; raises WrkError, ServerError or KeyboardInterrupt (after stopping every server)."""
    wrk = find_wrk()
    with tempfile.TemporaryDirectory(prefix="wsup-bench-", dir="/tmp") as tmp:
        all_specs = build_specs(settings.workers, tmp)
        unknown = set(settings.servers) - set(all_specs)
        if unknown:
            raise ServerError(f"unknown server(s) {', '.join(sorted(unknown))}; known: {', '.join(all_specs)}")
        specs = [all_specs[name] for name in settings.servers]
        ctx = new_context(specs, wrk, settings, argv)
        log(
            f"{len(specs)} servers x {settings.rounds} rounds x ({settings.warmup_s:g}s warm-up + "
            f"{len(MODES)} x {settings.duration_s:g}s) at least; load {'/'.join(map(str, ctx.load_start))}"
        )
        samples = run_rounds(specs, wrk, settings, Path(tmp))
        ctx.load_end = loadavg()
    return samples, ctx


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    # Also when started in the background by a shell, which ignores SIGINT for its background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.from_json is not None:
        samples, settings, ctx = from_json(orjson.loads(args.from_json.read_bytes()))
    else:
        settings = settings_from(args)
        try:
            samples, ctx = benchmark(settings, argv)
        except (ServerError, WrkError) as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted; every server was stopped", file=sys.stderr)
            return 130
        if args.json is not None:
            args.json.write_bytes(orjson.dumps(to_json(samples, settings, ctx), option=orjson.OPT_INDENT_2))
    section = render(samples, settings, ctx)
    if args.no_write:
        print(section)
    else:
        write_section(args.output, section, settings.workers)
        log(f"wrote the throughput section of {args.output}")
        print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
