"""A leaking app under ``wsup --max-memory`` (issue 15): are workers replaced near the limit, with no failed request,
and does the memory of the whole process tree stay bounded?

Run from the repository root::

    .venv/bin/python bench/recycle_memory.py                  # 3 runs of 300 s: 16 KiB x N=1, 16 KiB x N=3, 4 KiB x N=1
    .venv/bin/python bench/recycle_memory.py --seconds 30 --runs 16:2

wsup runs the test app ``tests.apps.lifecycle_app`` with 4 workers and ``--max-memory 150M --recycle-concurrency N``;
``wrk -t2 -c64`` keep-alive on ``/leak?kib=K`` makes every request keep K KiB for the life of its worker. Every 0.2 s
this script reads the RSS of every process of the tree (psutil). Reported per run (K, N): failed requests,
workers recycled (from the supervisor's log: how many before the limit, by forecast), the highest RSS any worker
reached, the recycled workers that passed the limit by more than they grew in one sampling period (1 s: issue 15's
target), and the tree's RSS over the run. Results go to docs/BENCHMARKS.md between
``<!-- recycle-memory:start -->`` and ``<!-- recycle-memory:end -->``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from reload_report import machine, now_utc
from reload_servers import REPO, Server, ServerSpec
from reload_wrk import WrkRun, wrk_argv
from throughput_system import loadavg
from wrk_output import find_wrk

WORKERS = 4
LIMIT_MIB = 150
START, END = "<!-- recycle-memory:start -->", "<!-- recycle-memory:end -->"
APP = "tests.apps.lifecycle_app:asgi"


SAMPLE_S = 1.0  # the supervisor's look interval: the target allows what a worker grows in one


def spec(run_dir: str, concurrency: int) -> ServerSpec:
    return ServerSpec(
        "wsup",
        (sys.executable, "bin/wsup", "start", APP, "-i", str(WORKERS), "--port", "{port}", "--name", "bench-reload")
        + ("--no-access-log", "--log-level", "info", "--max-memory", f"{LIMIT_MIB}M")
        + ("--recycle-concurrency", str(concurrency)),
        "supervisor.worker",
        {"WSUP_RUN_DIR": run_dir},
    )


class TreeMemory:
    """Samples the RSS of every process of the server's tree until stopped."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.worker_peak = 0
        self.tree: list[int] = []
        self.workers: dict[int, list[tuple[float, int]]] = {}  # pid -> (monotonic time, RSS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        assert self.server.master is not None
        while not self._stop.wait(0.2):
            total = 0
            try:
                procs = [self.server.master, *self.server.master.children(recursive=True)]
            except psutil.Error:
                continue
            workers = {p.pid for p in self.server.worker_procs()}
            for proc in procs:
                try:
                    rss = int(proc.memory_info().rss)
                except psutil.Error:
                    continue
                total += rss
                if proc.pid in workers:
                    self.worker_peak = max(self.worker_peak, rss)
                    self.workers.setdefault(proc.pid, []).append((time.monotonic(), rss))
            self.tree.append(total)

    def past_target(self, live: set[int], limit: int) -> list[float]:
        """MiB by which each gone (recycled) worker passed ``limit`` plus its largest growth in ``SAMPLE_S``, for
        those that did."""
        past = []
        for pid, series in self.workers.items():
            if pid in live:
                continue
            grew = 0
            for i, (t0, rss0) in enumerate(series):
                grew = max([grew] + [rss1 - rss0 for t1, rss1 in series[i + 1 :] if t1 - t0 <= SAMPLE_S])
            over = max(rss for _, rss in series) - limit - grew
            if over > 0:
                past.append(over / (1 << 20))
        return past

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run_one(wrk: str, seconds: float, kib: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wsup-mem-", dir="/tmp") as run_dir:
        with Server(spec(run_dir, concurrency), WORKERS, Path(run_dir)) as server:
            server.wait_ready()
            load = WrkRun(wrk_argv(wrk, server.url(f"/leak?kib={kib}"), close=False))
            with TreeMemory(server) as memory, load as run:
                time.sleep(seconds)
                summary = run.finish()
            status = server.wsup_status()
            live = {proc.pid for proc in server.worker_procs()}
            log = server.log_path.read_text(errors="replace")
    recycles = [line for line in log.splitlines() if "recycling worker" in line]
    return {
        "kib": kib,
        "concurrency": concurrency,
        "summary": summary,
        "memory": memory,
        "replaced": status.get("totals", {}).get("replacements", {}),
        "forecast": sum("forecast to reach" in line for line in recycles),
        "recycles": len(recycles),
        "behind": sum("cannot keep up" in line for line in log.splitlines()),
        "past": memory.past_target(live, LIMIT_MIB << 20),
        "recycle_s": (status.get("recycling") or {}).get("recycle_s"),
        "load": loadavg(),
    }


def row(result: dict[str, Any]) -> str:
    mib = 1 << 20
    memory: TreeMemory = result["memory"]
    tree = memory.tree
    quarter = max(1, len(tree) // 4)
    past = result["past"]
    passed = f"{len(past)}" + (f" (by up to {max(past):.0f} MiB)" if past else "")
    return (
        f"| {result['kib']} KiB | {result['concurrency']} | {result['summary'].requests:,} |"
        f" {result['summary'].failed} |"
        f" {result['replaced']} | {result['forecast']} of {result['recycles']} | {result['recycle_s']} s |"
        f" {memory.worker_peak / mib:.0f} MiB | {passed} | {sum(tree[:quarter]) / quarter / mib:.0f} /"
        f" {sum(tree[-quarter:]) / quarter / mib:.0f} / {max(tree, default=0) / mib:.0f} MiB | {result['load']} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=300.0, help="per run")
    parser.add_argument(
        "--runs", default="16:1,16:3,4:1", help="runs as KIB:N (KiB leaked per request, --recycle-concurrency), ..."
    )
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args(argv)
    wrk = find_wrk()
    runs = [tuple(int(x) for x in run.split(":")) for run in args.runs.split(",")]
    results = [run_one(wrk, args.seconds, kib, concurrency) for kib, concurrency in runs]
    m = machine(REPO)
    section = "\n".join(
        [
            "## Recycling a leaking app by memory (issue 15)",
            "",
            f"- Run {now_utc()} on {m['nproc']} cores ({m['cpu']}), Linux {m['kernel']}, wsup {m['wsup']};"
            f" {args.seconds:g} s per run. **A shared, loaded machine** (load average at the end of each run in the"
            " last column).",
            f"- `wsup start {APP} -i {WORKERS} --max-memory {LIMIT_MIB}M --recycle-concurrency N`; `wrk -t2 -c64`"
            " keep-alive on `/leak?kib=K` (every request keeps K KiB for the life of its worker).",
            f"- *past the target*: recycled workers whose highest RSS passed {LIMIT_MIB} MiB by more than they grew"
            f" in one sampling period ({SAMPLE_S:g} s), sampled every 0.2 s; *by forecast*: recycles started before"
            " the limit (supervisor log).",
            "",
            "| K | N | requests | failed | workers recycled (by reason) | by forecast | recycle duration planned |"
            " highest worker RSS | past the target | tree RSS: first quarter mean / last quarter mean / max |"
            " load average |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *(row(result) for result in results),
        ]
    )
    print(section)
    if not args.no_write:
        path = REPO / "docs" / "BENCHMARKS.md"
        text = path.read_text()
        block = f"{START}\n{section}\n{END}"
        if START in text and END in text:
            head, rest = text.split(START, 1)
            text = head + block + rest.split(END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        tmp = path.with_name(f".{path.name}.mem.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
