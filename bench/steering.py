"""Connection-steering benchmark (issue 3): wsup's steering against the kernel's hash and uvicorn --workers.

Run from the repository root::

    .venv/bin/python bench/steering.py            # the reference run, about 5-8 minutes on 2 cores
    .venv/bin/python bench/steering.py --quick    # fewer runs of each scenario: for development

Three servers with 4 workers each run side by side (uvicorn ``--workers 4``, wsup ``--balance hash``, wsup
least-conn) and each scenario's runs are interleaved across them, so a busy moment on the shared machine does not
land on one server only:

1. 400 WebSockets opened at once: max/min connections per worker (by each client's greeting pid).
2. 400 WebSockets arriving at random instants over 3 s: the same. And a few users on a quiet service: 4 (then 8)
   WebSockets opened one after the other 0.2 s apart (and 8 at 20 ms): in how many trials each worker got exactly
   its share.
3. The busiest worker killed (SIGKILL) with 400 connected; its clients reconnect over 1 s once the replacement
   serves, and (separately) 0.5-1.5 s after being cut, ready or not: how many land on the replacement, final max/min.
4. One worker's event loop blocked for 2 s (``tests/apps/stall.py``, on three fresh servers) while clients keep
   arriving: how many new connections waited more than 250 ms, and for wsup when its status showed weight 0.
5. Cost: program build/attach time (direct, and as ``wsup status`` reports it), the policy's compute time, and
   latency of new connections (WebSocket greeting; TCP connect + ``GET /health``) with steering and with the hash.

Results go to docs/BENCHMARKS.md between ``<!-- steering:start -->`` and ``<!-- steering:end -->``, the raw numbers
to ``--json``. Every process started here is stopped, also on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

# steering_servers (first in this order) puts the repository root on sys.path for the supervisor imports below.
from steering_clients import new_connection_latencies, percentile
from steering_report import render, write_section
from steering_scenarios import STALL_S, burst, crash_refill, loop_stall, sparse, spread_out
from steering_servers import REPO, SERVERS, Server, build_specs
from throughput_system import cpu_model, package_versions, wsup_revision

from supervisor.steering.balancing import SlotLoad
from supervisor.steering.bpf import attach_program, build_weighted_program, detach_program
from supervisor.steering.load_tracker import LoadTracker

WORKERS = 4
CLIENTS = 400
SPREAD_OVER_S = 3.0
# A few users on a quiet service: one WebSocket every 0.2 s (issue 11), and every 20 ms (50/s: where wsup stops
# placing each arrival on its own, see load_tracker.EXACT_MAX_ARRIVALS_PER_S).
SPARSE_GAP_S = 0.2
SPARSE_FAST_GAP_S = 0.02
# The same 4 users, each trial after a quiet spell of 3-4 s: the case a 5 ms "settle" plan (issue 11) must not break.
SPARSE_IDLE_S = (3.0, 4.0)
STALL_CLIENTS = 50  # over the 2 s stall and 0.5 s after: one every 50 ms on average


@dataclass(frozen=True, slots=True)
class Plan:
    bursts: int
    sparse: int
    spread_out: int
    crashes: int
    stalls: int
    http_requests: int
    attach_runs: int


FULL = Plan(bursts=5, sparse=8, spread_out=3, crashes=2, stalls=2, http_requests=1000, attach_runs=20_000)
QUICK = Plan(bursts=2, sparse=2, spread_out=1, crashes=1, stalls=1, http_requests=200, attach_runs=2_000)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def machine() -> dict[str, str]:
    versions = package_versions(("uvicorn", "uvloop", "websockets", "starlette"))
    text = ", ".join(f"{'Python' if name == 'python' else name} {version}" for name, version in versions.items())
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} × {cpu_model()}, Linux {platform.release()}",
        "versions": f"{text}, wsup at {wsup_revision(REPO)} (plus the working tree)",
    }


def load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def steering_costs(runs: int) -> dict[str, Any]:
    """Build + attach a 4-slot program on a private reuseport group, and the policy's plan, in microseconds."""
    with contextlib.ExitStack() as stack:
        group: list[socket.socket] = []
        for _ in range(WORKERS):
            sock = stack.enter_context(socket.socket())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", group[0].getsockname()[1] if group else 0))
            sock.listen(16)
            group.append(sock)
        build, attach = [], []
        for index in range(runs):
            weights = [2500 + index % 7, 2500, 2500 - index % 7, 2500]
            started = time.perf_counter()
            program = build_weighted_program(weights)
            built = time.perf_counter()
            attach_program(group[0], program)
            attach.append((time.perf_counter() - built) * 1e6)
            build.append((built - started) * 1e6)
        detach_program(group[0])
    tracker = LoadTracker()
    plans = []
    for index in range(min(runs, 5000)):
        now = index * 0.002  # the fast cadence, in a burst: every slot's shared count grows
        loads = [
            SlotLoad(slot, True, 100, 3, 1, 0, 0.01 * slot, index + slot, index + (index + slot) % 5)
            for slot in range(WORKERS)
        ]
        started = time.perf_counter()
        tracker.observe(now, loads)
        tracker.plan(now, loads)
        plans.append((time.perf_counter() - started) * 1e6)
    return {
        "attach_runs": runs,
        "build_us_mean": statistics.fmean(build),
        "attach_us_mean": statistics.fmean(attach),
        "attach_us_p99": percentile(attach, 0.99),
        "plan_us_mean": statistics.fmean(plans),
    }


async def interleaved(
    servers: dict[str, Server], runs: int, label: str, scenario: Callable[[Server, int], Awaitable[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for run in range(runs):
        for name, server in servers.items():
            result = await scenario(server, run)
            results[name].append(result)
            shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
            print(f"  {label} {run + 1}/{runs} {name}: {shown}", flush=True)
    return results


def _idle_spell(run: int) -> float:
    """3.0-4.0 s, a different length each trial (the supervisor's once-a-second reports fall at varying phases)."""
    low, high = SPARSE_IDLE_S
    return low + (high - low) * ((run * 0.37) % 1.0)


async def demo_scenarios(servers: dict[str, Server], plan: Plan) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {name: {} for name in servers}
    parts: list[tuple[str, int, Callable[[Server, int], Awaitable[dict[str, Any]]]]] = [
        ("burst", plan.bursts, lambda server, run: burst(server, CLIENTS)),
        ("sparse4", plan.sparse, lambda server, run: sparse(server, WORKERS, SPARSE_GAP_S)),
        ("sparse8", plan.sparse, lambda server, run: sparse(server, 2 * WORKERS, SPARSE_GAP_S)),
        ("sparse8_fast", plan.sparse, lambda server, run: sparse(server, 2 * WORKERS, SPARSE_FAST_GAP_S)),
        ("sparse4_idle", plan.sparse, lambda server, run: sparse(server, WORKERS, SPARSE_GAP_S, _idle_spell(run))),
        ("spread_out", plan.spread_out, lambda server, run: spread_out(server, CLIENTS, SPREAD_OVER_S, run)),
        ("crash", plan.crashes, lambda server, run: crash_refill(server, CLIENTS, run, when_served=True)),
        ("crash_early", plan.crashes, lambda server, run: crash_refill(server, CLIENTS, run, when_served=False)),
    ]
    for key, runs, scenario in parts:
        for name, results in (await interleaved(servers, runs, key, scenario)).items():
            out[name][key] = results
    for _ in range(5):  # new-connection latency, interleaved in rounds
        for name, server in servers.items():
            samples = await asyncio.to_thread(new_connection_latencies, server.port, plan.http_requests // 5)
            out[name].setdefault("http", []).extend(samples)
    for name in servers:
        samples = out[name].pop("http")
        out[name]["http_p50_ms"] = percentile(samples, 0.5) * 1000
        out[name]["http_p99_ms"] = percentile(samples, 0.99) * 1000
    return out


def notes(results: dict[str, Any]) -> list[str]:
    """What the numbers mean, with the figures they rest on taken from this run."""
    servers = results["servers"]
    spans = [run["span_ms"] for server in servers.values() for run in server.get("burst", [])]
    ready = [run["ready_s"] for run in servers["wsup"].get("crash_early", []) + servers["wsup"].get("crash", [])]
    span_text = f"{min(spans):.0f}-{max(spans):.0f} ms" if spans else "n/a"
    updates = [run["updates"] for run in servers["wsup"].get("burst", []) if "updates" in run]
    updates_text = f"{min(updates)}-{max(updates)}" if updates else "n/a"
    ready_text = f"{min(ready):.1f}-{max(ready):.1f} s" if ready else "n/a"
    return [
        "How to read this:",
        "",
        "- *At once*: the kernel picks a listener at each SYN, with the program in force. The client's"
        f" {CLIENTS} connect calls took {span_text} per burst. Each worker keeps its live connection count in a"
        " page of memory the supervisor reads (`ipc/counters.py`); the first arrival wakes the supervisor (it"
        " watches the listeners' accept queues), and while the live total grows it rebuilds the program from"
        f" those counts every 2 ms ({updates_text} programs per burst here). What is left at the end is the"
        " random spread of the connections placed under the last program. With one program for the whole burst"
        " (the kernel's hash, or wsup before the shared counts, re-attaching every 100 ms from reports that a"
        " busy worker sends late) 400 connections at equal weights have a median max/min of 1.22.",
        "- *Over 3 s*: every arrival after 50 ms of quiet wakes the supervisor, which places the next one from"
        " the current counts; what remains is a connection or two of noise per worker.",
        "- *Crash*: a slot whose worker is starting gets weight 0 (a connection queued there would wait for the"
        f" import); the replacement took {ready_text} to be ready on this machine, so clients that come back"
        " sooner are placed on the survivors, and WebSockets stay where they are placed. Those that come back once"
        " it serves go to it almost all.",
        "- *Stall*: uvicorn's workers share one accept queue, and a blocked worker does not call accept(), so it"
        " naturally takes nothing; with one SO_REUSEPORT queue per worker, wsup must notice the silence first: a"
        " worker 0.15 s behind its peers with a connection waiting gets weight 0 (with nothing waiting, at the"
        " supervisor's 0.5 s `stall_after`, hence some 0.5 s figures above). Connections placed on it before"
        " that wait for the whole stall.",
        "",
    ]


def start_all(stack: contextlib.ExitStack, app: str, run_dir: str, log_dir: Path, tag: str) -> dict[str, Server]:
    specs = build_specs(app, WORKERS, run_dir, tag)
    servers = {name: stack.enter_context(Server(specs[name], WORKERS, log_dir)) for name in SERVERS}
    for server in servers.values():
        server.wait_ready()
    return servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs of each scenario (development)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "BENCHMARKS.md", help="markdown file")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _interrupt)
    meta = {
        **machine(),
        "load_before": load(),
        "workers": WORKERS,
        "clients": CLIENTS,
        "spread_over_s": SPREAD_OVER_S,
        "sparse_gap_s": SPARSE_GAP_S,
        "sparse_fast_gap_s": SPARSE_FAST_GAP_S,
        "sparse_idle_s": SPARSE_IDLE_S,
        "stall_s": STALL_S,
        "http_requests": plan.http_requests,
        "command": shlex.join([".venv/bin/python", "bench/steering.py", *(argv or sys.argv[1:])]),
    }
    run_dir = tempfile.mkdtemp(prefix="wsup-bs", dir="/tmp")  # short: Unix socket paths must fit in 107 bytes
    log_dir = Path(run_dir) / "logs"
    log_dir.mkdir()
    runs = {"burst": plan.bursts, "spread_out": plan.spread_out, "sparse": plan.sparse}
    results: dict[str, Any] = {"meta": meta, "runs": runs}
    try:
        print(f"steering benchmark ({'quick' if args.quick else 'full'}); logs in {log_dir}", flush=True)
        with contextlib.ExitStack() as stack:
            servers = start_all(stack, "app:asgi", run_dir, log_dir, "demo")
            results["servers"] = asyncio.run(demo_scenarios(servers, plan))
            status = servers["wsup"].status() or {}
        with contextlib.ExitStack() as stack:
            servers = start_all(stack, "stall:asgi", run_dir, log_dir, "stall")
            stalls = asyncio.run(
                interleaved(servers, plan.stalls, "stall", lambda s, run: loop_stall(s, STALL_CLIENTS, run))
            )
        for name, runs in stalls.items():
            results["servers"][name]["stall"] = runs
        balance = status.get("balance", {})
        results["costs"] = {
            **steering_costs(plan.attach_runs),
            "status_updates": balance.get("updates"),
            "status_mean_attach_us": balance.get("mean_attach_us"),
        }
        meta["load_after"] = load()
    except KeyboardInterrupt:
        print("interrupted: every server was stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    results["notes"] = notes(results)
    section = render(results)
    write_section(args.output, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
