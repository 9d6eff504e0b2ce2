"""The throughput results: what one measured server start yields (a Sample), and the statistics over rounds."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from throughput_servers import Memory, StopResult, TreeCpu, TreeMemory
from throughput_system import Machine
from throughput_wrk import WrkResult

BASELINE = "uvicorn"
TARGET_RATIO = 0.97  # issue 2: wsup within 3% of plain uvicorn
MODES = ("keep-alive", "close")


@dataclass(frozen=True, slots=True)
class LoadRun:
    wrk: WrkResult
    cpu: TreeCpu  # the server tree's CPU seconds during the run
    wall_s: float
    other_cores: float  # CPU used by everything but this server and wrk, in cores (other people's tests...)
    steal_cores: float


@dataclass(frozen=True, slots=True)
class Sample:
    server: str
    round: int
    runs: dict[str, LoadRun]
    memory_warm: TreeMemory
    memory_loaded: TreeMemory
    stop: StopResult
    load_before: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Settings:
    workers: int
    threads: int
    connections: int
    duration_s: float
    warmup_s: float
    rounds: int  # the minimum; more are added while quiet runs are missing (min_quiet) and time is left (budget_s)
    servers: tuple[str, ...]
    quick: bool
    quiet_cores: float  # a run during which other processes used more CPU than this (in cores) is disturbed
    quiet_wait_s: float  # before each server start, wait up to this long for the machine to be quiet
    min_quiet: int
    budget_s: float


@dataclass(slots=True)
class Context:
    machine: Machine
    versions: dict[str, str]
    wrk_version: str
    revision: str
    commands: dict[str, str]
    wrk_command: str
    invocation: str
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    notes: list[str] = field(default_factory=list)


def by_server(samples: Sequence[Sample], server: str) -> list[Sample]:
    return [s for s in samples if s.server == server]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired_ratios(samples: Sequence[Sample], server: str, mode: str) -> list[float]:
    """server/baseline req/s within each round: pairs measured minutes apart cancel the machine's slow drifts."""
    base = {s.round: s.runs[mode].wrk.requests_per_s for s in by_server(samples, BASELINE)}
    return [
        s.runs[mode].wrk.requests_per_s / base[s.round] for s in by_server(samples, server) if base.get(s.round, 0) > 0
    ]


def cpu_us_per_request(run: LoadRun) -> float:
    """The server tree's CPU per request: less moved than req/s by other processes taking CPU away."""
    return run.cpu.total / run.wrk.requests * 1e6 if run.wrk.requests else float("nan")


def paired_cpu_ratios(samples: Sequence[Sample], server: str, mode: str) -> list[float]:
    base = {s.round: cpu_us_per_request(s.runs[mode]) for s in by_server(samples, BASELINE)}
    return [cpu_us_per_request(s.runs[mode]) / base[s.round] for s in by_server(samples, server) if s.round in base]


def quiet_runs(samples: Sequence[Sample], server: str, mode: str, quiet_cores: float) -> list[LoadRun]:
    """The runs of ``server`` during which other processes stayed under ``quiet_cores``: the trustworthy ones."""
    return [s.runs[mode] for s in by_server(samples, server) if s.runs[mode].other_cores <= quiet_cores]


def missing_quiet(samples: Sequence[Sample], settings: Settings) -> int:
    """How many quiet runs are still wanted, over all servers and modes."""
    return sum(
        max(0, settings.min_quiet - len(quiet_runs(samples, server, mode, settings.quiet_cores)))
        for server in settings.servers
        for mode in MODES
    )


def _rps(runs: Sequence[LoadRun]) -> list[float]:
    return [r.wrk.requests_per_s for r in runs]


def verdict(samples: Sequence[Sample], settings: Settings, mode: str, server: str = "wsup") -> str:
    """Issue 2's question, answered from quiet runs when both sides have at least two, else from all runs, and
    saying how far the noise allows an answer."""
    mine = quiet_runs(samples, server, mode, settings.quiet_cores)
    base = quiet_runs(samples, BASELINE, mode, settings.quiet_cores)
    if len(mine) >= 2 and len(base) >= 2:
        ratio = median(_rps(mine)) / median(_rps(base))
        cpu = median([cpu_us_per_request(r) for r in mine]) / median([cpu_us_per_request(r) for r in base])
        facts = (
            f"quiet runs only ({len(mine)} and {len(base)}): req/s ratio {ratio:.3f}, server CPU per request "
            f"ratio {cpu:.3f}"
        )
        separated = max(_rps(mine)) < min(_rps(base))
        overlap = not separated and min(_rps(mine)) <= max(_rps(base))
    else:
        ratios = paired_ratios(samples, server, mode)
        if not ratios:
            return f"no {server}/uvicorn pairs measured"
        ratio, lo, hi = median(ratios), min(ratios), max(ratios)
        cpu = median(paired_cpu_ratios(samples, server, mode))
        facts = (
            f"too few quiet runs, so all runs: req/s ratio {ratio:.3f}, per round {lo:.3f}–{hi:.3f}; server CPU "
            f"per request ratio {cpu:.3f}"
        )
        separated, overlap = hi < 1.0, lo <= 1.0 <= hi
    slower = f"{(1 - ratio) * 100:.1f}% slower"
    if ratio >= TARGET_RATIO:
        return f"**meets the 3% target** ({facts})"
    if separated:
        return f"**{slower}: misses the 3% target, beyond run-to-run noise** ({facts})"
    if overlap:
        return f"**{slower} at the median, within run-to-run noise** ({facts})"
    return f"**{slower} at the median** ({facts})"


def worker_shares(run: LoadRun) -> list[float]:
    """Each worker's share of the workers' CPU in one run, busiest first: how evenly the load was spread."""
    total = sum(run.cpu.workers) or 1.0
    return sorted((cpu / total for cpu in run.cpu.workers), reverse=True)


def to_json(samples: Sequence[Sample], settings: Settings, ctx: Context) -> dict[str, Any]:
    return {"settings": asdict(settings), "context": asdict(ctx), "samples": [asdict(s) for s in samples]}


def load_run_from(run: dict[str, Any]) -> LoadRun:
    """A load run as ``dataclasses.asdict`` wrote it to JSON."""
    return LoadRun(
        wrk=WrkResult(**run["wrk"]),
        cpu=TreeCpu(master=run["cpu"]["master"], workers=tuple(run["cpu"]["workers"]), helpers=run["cpu"]["helpers"]),
        wall_s=run["wall_s"],
        other_cores=run["other_cores"],
        steal_cores=run["steal_cores"],
    )


def _sample_from(raw: dict[str, Any]) -> Sample:
    def memory(tree: dict[str, Any]) -> TreeMemory:
        master = tree["master"]
        return TreeMemory(
            master=Memory(**master) if master is not None else None,
            workers=tuple(Memory(**m) for m in tree["workers"]),
            helpers=tuple(Memory(**m) for m in tree["helpers"]),
        )

    runs = {mode: load_run_from(run) for mode, run in raw["runs"].items()}
    return Sample(
        server=raw["server"],
        round=raw["round"],
        runs=runs,
        memory_warm=memory(raw["memory_warm"]),
        memory_loaded=memory(raw["memory_loaded"]),
        stop=StopResult(**raw["stop"]),
        load_before=tuple(raw["load_before"]),
    )


def from_json(raw: dict[str, Any]) -> tuple[list[Sample], Settings, Context]:
    """The inverse of ``to_json``: re-render a saved run without measuring again."""
    settings = Settings(**{**raw["settings"], "servers": tuple(raw["settings"]["servers"])})
    context = raw["context"]
    ctx = Context(
        **{
            **context,
            "machine": Machine(**context["machine"]),
            "load_start": tuple(context["load_start"]),
            "load_end": tuple(context["load_end"]),
        }
    )
    return [_sample_from(s) for s in raw["samples"]], settings, ctx
