"""A leaking app under ``wsup --max-memory`` (issue 15): are workers replaced near the limit, with no failed request,
and does the memory of the whole process tree stay bounded?

Run from the repository root::

    .venv/bin/python bench/recycle_memory.py                  # 300 s
    .venv/bin/python bench/recycle_memory.py --seconds 30

wsup runs the test app ``tests.apps.lifecycle_app`` with 4 workers and ``--max-memory 150M``; ``wrk -t2 -c64``
keep-alive on ``/leak?kib=16`` makes every request keep 4 KiB for the life of its worker. Every 0.2 s this script
reads the RSS of every process of the tree (psutil). Reported: failed requests, workers recycled, the highest RSS any
worker reached (against the limit: the supervisor samples once a second, so a worker can pass the limit by what it
grows in about a second plus the time its replacement takes to get ready), and the tree's RSS over the run.
Results go to docs/BENCHMARKS.md between ``<!-- recycle-memory:start -->`` and ``<!-- recycle-memory:end -->``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

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


def spec(run_dir: str) -> ServerSpec:
    return ServerSpec(
        "wsup",
        (sys.executable, "bin/wsup", "start", APP, "-i", str(WORKERS), "--port", "{port}", "--name", "bench-reload")
        + ("--no-access-log", "--log-level", "warning", "--max-memory", f"{LIMIT_MIB}M"),
        "supervisor.worker",
        {"WSUP_RUN_DIR": run_dir},
    )


class TreeMemory:
    """Samples the RSS of every process of the server's tree until stopped."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.worker_peak = 0
        self.tree: list[int] = []
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
            self.tree.append(total)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args(argv)
    wrk = find_wrk()
    with tempfile.TemporaryDirectory(prefix="wsup-mem-", dir="/tmp") as run_dir:
        with Server(spec(run_dir), WORKERS, Path(run_dir)) as server:
            server.wait_ready()
            with TreeMemory(server) as memory, WrkRun(wrk_argv(wrk, server.url("/leak?kib=16"), close=False)) as run:
                time.sleep(args.seconds)
                summary = run.finish()
            status = server.wsup_status()
    mib = 1 << 20
    tree = memory.tree
    quarter = max(1, len(tree) // 4)
    m = machine(REPO)
    replaced = status.get("totals", {}).get("replacements", {})
    section = "\n".join(
        [
            "## Recycling a leaking app by memory (issue 15)",
            "",
            f"- Run {now_utc()} on {m['nproc']} cores ({m['cpu']}), Linux {m['kernel']}, wsup {m['wsup']}; load"
            f" average at the end {loadavg()}. **A shared, loaded machine**, and {args.seconds:g} s instead of 5"
            " minutes.",
            f"- `wsup start {APP} -i {WORKERS} --max-memory {LIMIT_MIB}M`; `wrk -t2 -c64` keep-alive on"
            " `/leak?kib=16` (every request keeps 16 KiB for the life of its worker).",
            "",
            "| requests | failed | workers recycled (by reason) | highest worker RSS | tree RSS: first quarter"
            " mean / last quarter mean / max |",
            "|---|---|---|---|---|",
            f"| {summary.requests:,} | {summary.failed} | {replaced} | {memory.worker_peak / mib:.0f} MiB"
            f" (limit {LIMIT_MIB} MiB) | {sum(tree[:quarter]) / quarter / mib:.0f} /"
            f" {sum(tree[-quarter:]) / quarter / mib:.0f} / {max(tree, default=0) / mib:.0f} MiB |",
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
