"""The throughput section of docs/BENCHMARKS.md: tables rendered from the samples, written between our markers."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from throughput_results import (
    BASELINE,
    MODES,
    Context,
    Sample,
    Settings,
    by_server,
    cpu_us_per_request,
    median,
    paired_cpu_ratios,
    paired_ratios,
    quiet_runs,
    verdict,
    worker_shares,
)
from throughput_servers import Memory, TreeMemory

DEFAULT_WORKERS = 2  # issue 2's comparison; other worker counts get a section of their own
TITLE = (
    "# Benchmarks\n\nMeasured numbers behind the README's comparison; each section is written by a script in bench/.\n"
)
MODE_TITLES = {"keep-alive": "keep-alive", "close": "`Connection: close` (a new connection per request)"}
MIB = 1024 * 1024
UNEVEN_SHARE = 0.65  # a busiest worker above this share of the workers' CPU (median over runs) gets a note
LOPSIDED_SHARE = 0.9  # and so does any single run where one worker did this much


def _quiet_table(samples: Sequence[Sample], settings: Settings, servers: Sequence[str], mode: str) -> list[str]:
    rows = [
        "| server | quiet runs | req/s median | min – max | ratio to uvicorn | p50 ms | p99 ms | server CPU µs/req "
        "| CPU ratio to uvicorn |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if not any(quiet_runs(samples, server, mode, settings.quiet_cores) for server in servers):
        return ["No run was quiet."]
    base = quiet_runs(samples, BASELINE, mode, settings.quiet_cores)
    base_rps = median([r.wrk.requests_per_s for r in base])
    base_cpu = median([cpu_us_per_request(r) for r in base])
    for server in servers:
        runs = quiet_runs(samples, server, mode, settings.quiet_cores)
        if not runs:
            rows.append(f"| {server} | 0 | – | – | – | – | – | – | – |")
            continue
        rps = [r.wrk.requests_per_s for r in runs]
        cpu = median([cpu_us_per_request(r) for r in runs])
        ratio, cpu_ratio = (f"{median(rps) / base_rps:.3f}", f"{cpu / base_cpu:.3f}") if base else ("–", "–")
        rows.append(
            f"| {server} | {len(runs)} | {median(rps):,.0f} | {min(rps):,.0f} – {max(rps):,.0f} | {ratio} "
            f"| {median([r.wrk.p50_ms for r in runs]):.2f} | {median([r.wrk.p99_ms for r in runs]):.2f} | {cpu:.0f} "
            f"| {cpu_ratio} |"
        )
    return rows


def _all_runs_table(samples: Sequence[Sample], servers: Sequence[str], mode: str) -> list[str]:
    rows = [
        "| server | runs | req/s median | min – max | ratio to uvicorn (median of rounds, range) | p50 ms | p99 ms "
        "| errors | server CPU µs/req | CPU ratio to uvicorn | others, cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server in servers:
        runs = [s.runs[mode] for s in by_server(samples, server)]
        if not runs:
            continue
        rps = [r.wrk.requests_per_s for r in runs]
        ratios = paired_ratios(samples, server, mode)
        ratio = f"{median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})" if ratios else "–"
        errors = sum(r.wrk.socket_errors + r.wrk.non_2xx for r in runs)
        rows.append(
            f"| {server} | {len(runs)} | {median(rps):,.0f} | {min(rps):,.0f} – {max(rps):,.0f} "
            f"| {'1 (baseline)' if server == BASELINE else ratio} | {median([r.wrk.p50_ms for r in runs]):.2f} "
            f"| {median([r.wrk.p99_ms for r in runs]):.2f} | {errors} "
            f"| {median([cpu_us_per_request(r) for r in runs]):.0f} "
            f"| {median(paired_cpu_ratios(samples, server, mode)):.3f} | {median([r.other_cores for r in runs]):.2f} |"
        )
    return rows


def _mib(value: float) -> str:
    return f"{value / MIB:.1f}"


def _memory_cell(samples: Sequence[Sample], pick: Callable[[Sample], Sequence[int]]) -> str:
    """Median over rounds of each picked process (e.g. worker 1, worker 2), in MiB, joined with ' / '."""
    per_round = [pick(s) for s in samples]
    if not per_round or not per_round[0]:
        return "–"
    width = min(len(values) for values in per_round)
    return " / ".join(_mib(median([values[i] for values in per_round])) for i in range(width))


def _memory_table(samples: Sequence[Sample], servers: Sequence[str]) -> list[str]:
    rows: list[tuple[str, Callable[[Sample], Sequence[int]]]] = [
        ("supervisor / master RSS, after warm-up", lambda s: [m.rss for m in _master(s.memory_warm)]),
        ("supervisor / master RSS, after load", lambda s: [m.rss for m in _master(s.memory_loaded)]),
        ("supervisor / master USS, after load", lambda s: [m.uss for m in _master(s.memory_loaded)]),
        ("each worker RSS, after warm-up", lambda s: [w.rss for w in s.memory_warm.workers]),
        ("each worker RSS, after load", lambda s: [w.rss for w in s.memory_loaded.workers]),
        ("each worker USS, after load", lambda s: [w.uss for w in s.memory_loaded.workers]),
        ("other processes RSS, after load", lambda s: [m.rss for m in s.memory_loaded.helpers]),
        ("whole tree RSS, after load", lambda s: [_tree_total(s.memory_loaded, "rss")]),
        ("whole tree USS, after load", lambda s: [_tree_total(s.memory_loaded, "uss")]),
        ("whole tree PSS, after load", lambda s: [_tree_total(s.memory_loaded, "pss")]),
    ]
    lines = ["| MiB (median over rounds) | " + " | ".join(servers) + " |", "|---|" + "---:|" * len(servers)]
    for label, pick in rows:
        cells = [_memory_cell(by_server(samples, server), pick) for server in servers]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _master(memory: TreeMemory) -> list[Memory]:
    return [memory.master] if memory.master is not None else []


def _tree_total(memory: TreeMemory, attr: str) -> int:
    return sum(getattr(m, attr) for m in (*_master(memory), *memory.workers, *memory.helpers))


def _percent(values: Sequence[float]) -> str:
    return f"{median(values) * 100:.0f}%"


def _cpu_table(samples: Sequence[Sample], servers: Sequence[str]) -> list[str]:
    lines = [
        "| server | load | supervisor / master | workers, busiest first | workers' CPU split | wrk | server + wrk "
        "| others |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for server in servers:
        mine = by_server(samples, server)
        for mode in MODES:
            runs = [s.runs[mode] for s in mine]
            if not runs:
                continue
            width = min(len(r.cpu.workers) for r in runs)
            busiest = [sorted(r.cpu.workers, reverse=True) for r in runs]
            each = " / ".join(
                _percent([b[i] / r.wall_s for b, r in zip(busiest, runs, strict=True)]) for i in range(width)
            )
            split = " / ".join(_percent([worker_shares(r)[i] for r in runs]) for i in range(width))
            master = _percent([r.cpu.master / r.wall_s for r in runs]) if _master(mine[0].memory_warm) else "–"
            lines.append(
                f"| {server} | {mode} | {master} | {each} | {split} "
                f"| {_percent([r.wrk.cpu_s / r.wall_s for r in runs])} "
                f"| {_percent([(r.cpu.total + r.wrk.cpu_s) / r.wall_s for r in runs])} "
                f"| {_percent([r.other_cores for r in runs])} |"
            )
    return lines


def uneven_notes(samples: Sequence[Sample], servers: Sequence[str]) -> list[str]:
    """Say where one worker did most of the work: on a small machine that shares its cores with the load
    generator, a single busy worker is cheaper per request than two half-busy ones, which flatters that server
    in req/s (on a machine with a core per worker it would cap throughput instead)."""
    notes = []
    for server in servers:
        for mode in MODES:
            mine = [s for s in by_server(samples, server) if len(s.runs[mode].cpu.workers) > 1]
            shares = [worker_shares(s.runs[mode])[0] for s in mine]
            lopsided = [
                f"round {s.round + 1} ({share * 100:.0f}%, {s.runs[mode].wrk.requests_per_s:,.0f} req/s)"
                for s, share in zip(mine, shares, strict=True)
                if share >= LOPSIDED_SHARE
            ]
            if shares and median(shares) > UNEVEN_SHARE:
                notes.append(
                    f"{server}, {mode}: the busiest worker did a median {median(shares) * 100:.0f}% of the "
                    "workers' work: connections were spread unevenly."
                )
            if lopsided:
                notes.append(
                    f"{server}, {mode}: one worker did nearly all the work in {', '.join(lopsided)}: the other sat "
                    "idle for the whole run."
                )
    return notes


def steering_notes(samples: Sequence[Sample], settings: Settings) -> list[str]:
    """With wsup-hash measured, split wsup's gap to uvicorn into steering and the rest (quiet runs' medians)."""
    notes = []
    for mode in MODES:
        medians = {
            server: median([r.wrk.requests_per_s for r in quiet_runs(samples, server, mode, settings.quiet_cores)])
            for server in ("wsup", "wsup-hash", BASELINE)
        }
        if all(value == value for value in medians.values()):  # no NaN: every server has quiet runs
            notes.append(
                f"{mode}, quiet runs: steering (wsup / wsup-hash) {medians['wsup'] / medians['wsup-hash']:.3f}; "
                f"counting, reporting and the supervisor (wsup-hash / uvicorn) "
                f"{medians['wsup-hash'] / medians[BASELINE]:.3f}."
            )
    return notes


def log_notes(samples: Sequence[Sample]) -> list[str]:
    """Warnings and errors the servers logged (at --log-level warning, a healthy run logs nothing)."""
    notes = []
    for s in samples:
        for line in s.stop.log_tail.splitlines()[:3]:
            notes.append(f"{s.server} (round {s.round + 1}) logged: `{line.strip()}`")
    return notes


def _disturbance(samples: Sequence[Sample], settings: Settings) -> str:
    runs = [r for s in samples for r in s.runs.values()]
    others = [r.other_cores for r in runs]
    quiet = sum(1 for r in runs if r.other_cores <= settings.quiet_cores)
    return (
        f"CPU used by other processes during the load runs: median {median(others):.2f} cores, max "
        f"{max(others, default=0.0):.2f}; stolen by the hypervisor: max "
        f"{max((r.steal_cores for r in runs), default=0.0):.2f}. {quiet} of {len(runs)} runs were quiet (others at "
        f"most {settings.quiet_cores:g} cores)."
    )


def _rounds(samples: Sequence[Sample]) -> int:
    return len({s.round for s in samples})


def markers(workers: int) -> tuple[str, str]:
    name = "throughput" if workers == DEFAULT_WORKERS else f"throughput-{workers}-worker{'s' * (workers != 1)}"
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def render(samples: Sequence[Sample], settings: Settings, ctx: Context) -> str:
    servers = [s for s in settings.servers if by_server(samples, s)]
    m, v = ctx.machine, ctx.versions
    start, end = markers(settings.workers)
    plural = "s" * (settings.workers != 1)
    out = [
        start,
        "## Throughput: wsup vs uvicorn vs gunicorn"
        + ("" if settings.workers == DEFAULT_WORKERS else f", {settings.workers} worker{plural}"),
        "",
        f"Requests per second on the demo app's `/hello` (a 5-byte `text/plain` response) with {settings.workers} "
        f"worker process{'es' * (settings.workers != 1)} each, access log off, uvloop + httptools. "
        "Written by `bench/throughput.py`" + (" (**--quick run: indicative only**)" if settings.quick else "") + ".",
        "",
        *[
            f"- {MODE_TITLES[mode]}: {server}/uvicorn {verdict(samples, settings, mode, server)}"
            for server in servers
            if server.startswith("wsup")
            for mode in MODES
        ],
        "",
        "### Setup",
        f"- {m.date}; {m.nproc} CPUs ({m.cpu}), Linux {m.kernel}; wsup at commit `{ctx.revision}`.",
        f"- Python {v['python']}, uvicorn {v['uvicorn']}, gunicorn {v['gunicorn']}, uvicorn-worker "
        f"{v['uvicorn-worker']}, granian {v.get('granian', 'not installed')}, uvloop {v['uvloop']}, httptools "
        f"{v['httptools']}, starlette {v['starlette']}, {ctx.wrk_version}.",
        f"- Load average (1/5/15 min) before: {'/'.join(map(str, ctx.load_start))}, after: "
        f"{'/'.join(map(str, ctx.load_end))}. {_disturbance(samples, settings)}",
        f"- {_rounds(samples)} rounds; in each, every server is started fresh on a free port, waited for (`/hello` "
        f"answers 200 and all workers exist), warmed up with {settings.warmup_s:g}s of load (every worker must have "
        "served), measured with keep-alive, then with `Connection: close`, and stopped with its process tree. The "
        "server order rotates from round to round."
        + (
            f" Before each start, the script waited up to {settings.quiet_wait_s:g}s for other processes to use "
            f"at most {settings.quiet_cores:g} cores."
            if settings.quiet_wait_s > 0
            else ""
        )
        + (
            f" After {settings.rounds} rounds, rounds were added until every server had {settings.min_quiet} quiet "
            f"runs of each kind or {settings.budget_s:g}s had passed: {_rounds(samples)} rounds in all."
            if settings.min_quiet > 0
            else ""
        ),
        f"- Benchmark: `{ctx.invocation}`",
        f"- Load: `{ctx.wrk_command}` (and the same with `-H 'Connection: close'`); wrk shares the "
        f"{m.nproc} CPUs with the server.",
        "- Servers:",
        "",
        "```",
        *ctx.commands.values(),
        "```",
    ]
    for mode in MODES:
        out += [
            "",
            f"### Requests per second, {MODE_TITLES[mode]}",
            "",
            f"Quiet runs only (other processes used at most {settings.quiet_cores:g} cores):",
            "",
            *_quiet_table(samples, settings, servers, mode),
            "",
            "All runs:",
            "",
            *_all_runs_table(samples, servers, mode),
        ]
    out += [
        "",
        "Ratios of quiet runs are ratios of medians; those of all runs are taken within each round (the servers of "
        "a round ran minutes apart), then the median is shown. Errors are wrk's socket errors plus non-2xx "
        "responses. Server CPU per request is the CPU time of the whole server tree (supervisor or master, "
        "workers, helpers) during the run divided by the requests served: less sensitive than req/s to other "
        "processes taking CPU away, though it still depends on how busy each worker is.",
        "",
        "### Memory",
        "",
        "RSS counts shared pages (gunicorn's workers are forks that share the arbiter's pages; wsup's and uvicorn's "
        "are fresh interpreters); USS is memory private to the process; PSS splits shared pages among the "
        "processes that map them, so the tree's PSS is its real footprint.",
        "",
        *_memory_table(samples, servers),
        "",
        "### CPU during the load (median, % of one core)",
        "",
        *_cpu_table(samples, servers),
        *(
            [
                "",
                f"On {m.nproc} CPUs, server + wrk well under {m.nproc * 100}% while others are near 0% means CPU sat "
                "idle: the load was not spread so that every core could work.",
            ]
            if settings.workers > 1
            else []
        ),
    ]
    notes = [*ctx.notes, *uneven_notes(samples, servers), *log_notes(samples)]
    if "wsup-hash" in servers:
        notes[0:0] = [
            "wsup-hash is wsup started with `--balance hash`: the kernel's reuseport hash picks the worker instead "
            "of wsup's steering program; workers still count and report. wsup against wsup-hash is the cost (or "
            "gain) of steering; wsup-hash against uvicorn is that of counting, reporting and the supervisor.",
            *steering_notes(samples, settings),
        ]
    if notes:
        out += ["", "### Notes", "", *[f"- {note}" for note in notes]]
    out.append(end)
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str, workers: int) -> None:
    """Replace our marked section (or append it), re-reading the file just before: others write theirs too."""
    start_marker, end_marker = markers(workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else TITLE
    start, end = text.find(start_marker), text.find(end_marker)
    if start != -1 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(end_marker) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
