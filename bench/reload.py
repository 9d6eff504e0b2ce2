"""Zero-downtime reload benchmark (issue 4): wsup against uvicorn --workers and gunicorn + uvicorn workers.

Run from the repository root::

    .venv/bin/python bench/reload.py            # the reference run, about 6-10 minutes on 2 cores
    .venv/bin/python bench/reload.py --quick    # 2 reloads, 100 WebSocket clients, 1 round: for development

For each server (4 workers, the same app ``app:asgi``), one after the other:

1. ``wrk -t2 -c64 --latency`` keep-alive on /hello spanning N consecutive reloads (the next starts 0.5 s after the
   previous one completed); failed requests = wrk's socket errors (connect, read, write, timeout) + non-2xx.
2. The same with ``-H 'Connection: close'``: a new connection per request.
3. After each of those, a wrk run of the same length and settings without a reload: p99 without against during.
4. WebSockets: auto-reconnecting clients through one reload, 3 rounds with fresh clients: disconnects per client,
   close codes, and once all reconnected, max/min connections per worker (by each client's greeting pid; for wsup
   also ``wsup status``).
5. Reload duration for 4 workers: idle, and in each scenario above.

Results go to docs/BENCHMARKS.md between ``<!-- reload:start -->`` and ``<!-- reload:end -->``.
Every process started here (servers, wrk) is stopped, also on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import functools
import pickle
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TypeVar

import orjson
from reload_report import (
    MODES,
    PACKAGES,
    SERVERS,
    SPREAD_TARGET,
    Context,
    HttpRun,
    ServerResult,
    machine,
    now_utc,
    render,
    to_json,
    write_section,
)
from reload_servers import REPO, Server, ServerError, ServerSpec, build_specs
from reload_wrk import WrkRun, display_argv, wrk_argv
from reload_ws import run_websocket_reload
from throughput_system import loadavg, package_versions
from wrk_output import WrkError, find_wrk, wrk_version

WORKERS = 4
WARMUP_S = 1.0  # wrk runs this long before the first reload
GAP_S = 0.5  # between the end of one reload and the next (and after the last, before wrk stops)
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every `with`: servers and wrk are stopped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 reloads and 100 WebSocket clients, for development")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of wsup,uvicorn,gunicorn")
    parser.add_argument("--reloads", type=int, help="consecutive reloads per HTTP run (default 5, --quick 2)")
    parser.add_argument("--ws-clients", type=int, help="WebSocket clients (default 400, --quick 100)")
    parser.add_argument("--ws-rounds", type=int, help="WebSocket rounds, one reload each (default 3, --quick 1)")
    parser.add_argument("--scenarios", default="http,ws", help="comma-separated subset of http,ws (for development)")
    parser.add_argument("--wsup-log-level", default="warning", help="wsup's --log-level (info shows each drain)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "BENCHMARKS.md", help="markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    parser.add_argument("--rerender", type=Path, help="render the results.pickle of an earlier run; measure nothing")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    args.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if not args.scenarios <= {"http", "ws"}:
        parser.error(f"unknown scenarios: {', '.join(sorted(args.scenarios - {'http', 'ws'}))}")
    args.reloads = args.reloads or (2 if args.quick else 5)
    args.ws_clients = args.ws_clients or (100 if args.quick else 400)
    args.ws_rounds = args.ws_rounds or (1 if args.quick else 3)
    return args


def guarded(result: ServerResult, what: str, fn: Callable[[], T]) -> T | None:
    """Run one scenario; a failure is recorded in the results and the benchmark goes on."""
    try:
        return fn()
    except (ServerError, WrkError, RuntimeError, TimeoutError, subprocess.SubprocessError, OSError) as exc:
        message = f"{what}: {type(exc).__name__}: {exc}"
        log(f"{result.name}: {message}")
        result.errors.append(message.splitlines()[0][:300])
        return None


def http_scenario(server: Server, wrk: str, mode: str, reloads: int) -> HttpRun:
    run = HttpRun()
    argv = wrk_argv(wrk, server.url("/hello"), close=mode == "close")
    with WrkRun(argv) as load:
        time.sleep(WARMUP_S)
        try:
            for _ in range(reloads):
                run.reloads.append(server.reload())
                time.sleep(GAP_S)
        except (ServerError, subprocess.SubprocessError) as exc:
            run.error = str(exc).splitlines()[0][:300]
            log(f"{server.name} {mode}: reload failed: {exc}")
        run.during = load.finish()
    with WrkRun(argv) as load:
        time.sleep(run.during.seconds)
        run.baseline = load.finish()
    during, base = run.during, run.baseline
    aborted = sum(1 for r in run.reloads if r.aborted)
    log(
        f"{server.name} {mode}: {len(run.reloads)} reloads ({aborted} given up), {during.failed} failed"
        f" ({during.errors_text()}) of {during.requests:,} requests;"
        f" p99 {during.p99_ms:.2f} ms during, {base.p99_ms:.2f} ms without;"
        f" reloads {', '.join(f'{r.seconds:.2f}' for r in run.reloads)} s"
    )
    return run


def bench_server(spec: ServerSpec, wrk: str, log_dir: Path, args: argparse.Namespace) -> ServerResult:
    result = ServerResult(spec.name, spec.display())
    log(f"{spec.name}: starting ({spec.display()})")
    with Server(spec, WORKERS, log_dir) as server:
        try:
            server.wait_ready()
        except ServerError as exc:
            log(f"{spec.name}: did not start: {exc}")
            result.errors.append(f"start: {str(exc).splitlines()[0][:300]} (log: {server.log_path})")
            return result
        time.sleep(1.0)
        result.idle_reload = guarded(result, "idle reload", server.reload)
        if result.idle_reload:
            log(f"{spec.name}: idle reload {result.idle_reload.seconds:.2f} s")
        for mode in MODES if "http" in args.scenarios else ():
            run = guarded(result, f"HTTP {mode}", functools.partial(http_scenario, server, wrk, mode, args.reloads))
            if run is not None:
                result.http[mode] = run
                if run.error:
                    result.errors.append(f"HTTP {mode}: reload failed: {run.error}")
        for number in range(1, args.ws_rounds + 1 if "ws" in args.scenarios else 1):
            ws = guarded(result, "websocket", lambda: run_websocket_reload(server, args.ws_clients))
            if ws is None:
                break
            result.ws_rounds.append(ws)
            log(
                f"{spec.name} websocket round {number}: {ws.mean_disconnects:.2f} disconnects/client"
                f" {ws.disconnects}, codes {ws.close_codes}, per worker before {list(ws.before_per_worker.values())}"
                f" after {list(ws.per_worker.values())} (status {ws.status_per_worker}), spread {ws.spread:.2f},"
                f" reload {ws.reload.seconds:.2f} s"
            )
        result.errors += aborted_reloads(result)
        log(f"{spec.name}: stopping; log at {server.log_path}")
    return result


def aborted_reloads(result: ServerResult) -> list[str]:
    """Reloads the server itself gave up part-way, with the line it logged."""
    found = [("idle reload", result.idle_reload)]
    found += [(f"HTTP {mode}", r) for mode, run in result.http.items() for r in run.reloads]
    found += [(f"websocket round {n}", ws.reload) for n, ws in enumerate(result.ws_rounds, 1)]
    return [
        f"{what}: the server gave up a reload ({r.replaced} of 4 workers replaced): `{r.aborted}`"
        for what, r in found
        if r is not None and r.aborted
    ]


def missed_targets(results: list[ServerResult], reloads: int) -> list[str]:
    """wsup's misses, in words, for the notes."""
    wsup = next((r for r in results if r.name == "wsup"), None)
    if wsup is None:
        return []
    missed = []
    for mode, run in wsup.http.items():
        if run.during is not None and run.during.failed:
            missed.append(f"{mode}: {run.during.failed} failed requests ({run.during.errors_text()}), target 0")
        complete = [r for r in run.reloads if not r.aborted]
        if len(complete) < reloads:
            missed.append(f"{mode}: only {len(complete)} of {reloads} reloads completed")
    for number, ws in enumerate(wsup.ws_rounds, 1):
        if not ws.exactly_once_1012:
            missed.append(
                f"WebSockets round {number}: {ws.mean_disconnects:.2f} disconnects per client {ws.disconnects} with"
                f" codes {ws.close_codes}, target exactly 1 with 1012"
            )
    spreads = [ws.spread for ws in wsup.ws_rounds]
    if any(spread > SPREAD_TARGET for spread in spreads):
        over = [f"{spread:.2f}" for spread in spreads]
        missed.append(
            f"WebSockets: max/min connections per worker after the reload {', '.join(over)} in"
            f" {len(spreads)} rounds, target ≤ {SPREAD_TARGET} (worst {max(spreads) / SPREAD_TARGET - 1:.0%} over)"
        )
    missed += [f"error: {e}" for e in wsup.errors]
    return missed


def spread_analysis(results: list[ServerResult]) -> list[str]:
    """When wsup misses the spread target: what each round started from and ended with, and why."""
    wsup = next((r for r in results if r.name == "wsup"), None)
    if wsup is None or all(ws.spread <= SPREAD_TARGET for ws in wsup.ws_rounds):
        return []
    rounds = "; ".join(
        f"round {n}: {'/'.join(map(str, ws.before_per_worker.values()))} (max/min {ws.spread_before:.2f}) →"
        f" {'/'.join(map(str, ws.per_worker.values()))} ({ws.spread:.2f})"
        for n, ws in enumerate(wsup.ws_rounds, 1)
    )
    return [
        f"wsup's WebSockets per worker before → after each reload, in slot order: {rounds}. A reload replaces one"
        " slot at a time and, while it runs, only slots already replaced take new connections, weighted by each"
        " one's deficit against the mean of the *replaced* slots (plus a 4% floor): the first replacement must take"
        " all of its predecessor's clients, every later drain leaks a few to the slots replaced earlier, and the last"
        " slot ends with what is left. A surplus on the last slot replaced gets spread, but a surplus on the first"
        " one, or a deficit on the last, is carried over to the new workers."
    ]


def wsup_reload_time(results: list[ServerResult]) -> list[str]:
    """Where wsup's reload time under load goes: the drains, or starting the replacements."""
    wsup = next((r for r in results if r.name == "wsup"), None)
    run = wsup.http.get("keep-alive") if wsup else None
    if run is None or not run.reloads:
        return []
    total = sum(r.seconds for r in run.reloads)
    drains = sum(float(slot["seconds"]) for r in run.reloads for slot in r.slots)
    return [
        f"wsup's {len(run.reloads)} reloads under keep-alive load took {total:.1f} s in all, of which the drains"
        f" (old worker told to drain until it exited) took {drains:.1f} s; the rest is starting the replacements"
        " one after the other (a fresh interpreter importing the app, until READY) on 2 cores that wrk and the"
        " serving workers keep busy. Idle, a whole reload takes the time shown in the last table."
    ]


def reconnect_errors(results: list[ServerResult]) -> list[str]:
    parts = []
    for result in results:
        samples = {e for ws in result.ws_rounds for e in ws.error_samples}
        count = sum(ws.connect_errors for ws in result.ws_rounds)
        if count:
            parts.append(f"{result.name} {count} ({'; '.join(sorted(samples))})")
    if not parts:
        return []
    return ["Failed WebSocket reconnect attempts (the client retries after 50 ms): " + ", ".join(parts) + "."]


def notes(results: list[ServerResult], ctx: Context) -> list[str]:
    misses = missed_targets(results, ctx.reloads)
    verdict = (
        "wsup met every target in this run."
        if not misses and any(r.name == "wsup" for r in results)
        else "wsup missed: " + "; ".join(misses) + "."
    )
    return [
        verdict,
        *spread_analysis(results),
        *wsup_reload_time(results),
        *reconnect_errors(results),
        f"{ctx.machine['nproc']} cores shared by everything: wrk (2 threads), the 4 workers and the master of the"
        " server under test, the WebSocket clients (this process, uvloop), and other engineers' test runs (see the load"
        " averages). Absolute requests/s and latencies are therefore low and noisy; the failure counts, disconnects"
        " and spreads are the point.",
        "Failed requests are what wrk counts: socket errors (a read error is typically a keep-alive connection"
        " closed by the server with a request already sent; a timeout is no answer within wrk's default 2 s) plus"
        " non-2xx responses. wrk does not correct latency for coordinated omission.",
        'The p99 "during reloads" is over the whole wrk run, which also holds a 1 s warm-up and a 0.5 s pause after'
        " each reload; the run without reload has the same length and settings and runs right after it.",
        "uvicorn 0.54 handles SIGHUP in its multiprocess supervisor (`Multiprocess.restart_all`): one worker at a"
        " time, start the replacement, wait for its health check, SIGTERM the old one. On SIGTERM a uvicorn worker"
        " closes idle keep-alive connections at once and every WebSocket with 1012 in the same instant, and the"
        " clients reconnect through one shared listening socket, often to a worker that is restarted next.",
        "gunicorn's HUP starts 4 new workers and SIGTERMs the 4 old ones at once, without waiting for the new ones"
        " to be ready: connections wait in the shared accept queue meanwhile.",
        "uvicorn and gunicorn log at `info` (lifecycle lines only; no access log) so that readiness can be read from"
        " their logs; wsup logs at `warning`. Server logs of this run: " + ctx.log_dir + ".",
    ]


def publish(args: argparse.Namespace, ctx: Context, results: list[ServerResult], commands: dict[str, str]) -> None:
    section = render(ctx, results, commands, notes(results, ctx))
    if args.json:
        args.json.write_bytes(orjson.dumps(to_json(ctx, results), option=orjson.OPT_INDENT_2))
    if args.no_write:
        print(section)
    else:
        write_section(args.output, section)
        log(f"wrote the reload section of {args.output}")


def rerender(args: argparse.Namespace) -> int:
    """Render a saved run again (after a change to the report's wording), without measuring anything."""
    with args.rerender.open("rb") as saved:
        ctx, results, commands = pickle.load(saved)
    publish(args, ctx, results, commands)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rerender:
        return rerender(args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    wrk = find_wrk()
    started = time.monotonic()
    ctx = Context(
        quick=args.quick,
        reloads=args.reloads,
        ws_clients=args.ws_clients,
        ws_rounds=args.ws_rounds,
        command=shlex.join([".venv/bin/python", "bench/reload.py", *(sys.argv[1:] if argv is None else argv)]),
        wrk=wrk_version(wrk),
        started=now_utc(),
        machine=machine(REPO),
        versions=package_versions(PACKAGES),
        load_before=loadavg(),
        log_dir=tempfile.mkdtemp(prefix="wsup-rb-logs-", dir="/tmp"),
    )
    log(f"load average before: {ctx.load_before}; logs in {ctx.log_dir}")
    results: list[ServerResult] = []
    with tempfile.TemporaryDirectory(prefix="wsup-rb-", dir="/tmp") as run_dir:  # short: ipc:// paths live here
        specs = build_specs(WORKERS, run_dir, args.wsup_log_level)
        try:
            for name in args.servers:
                results.append(bench_server(specs[name], wrk, Path(ctx.log_dir), args))
        except KeyboardInterrupt:
            log("interrupted: every started process has been stopped; nothing written")
            return 130
    ctx.load_after = loadavg()
    ctx.seconds = time.monotonic() - started
    commands = {name: specs[name].display() for name in args.servers}
    commands["wrk"] = display_argv("http://127.0.0.1:8000/hello", close=False)
    commands["wrk, new connection per request"] = display_argv("http://127.0.0.1:8000/hello", close=True)
    saved = Path(ctx.log_dir) / "results.pickle"
    saved.write_bytes(pickle.dumps((ctx, results, commands)))
    publish(args, ctx, results, commands)
    log(f"load average after: {ctx.load_after}; took {ctx.seconds:.0f} s; saved results: {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
